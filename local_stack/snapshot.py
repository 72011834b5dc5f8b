"""Keep the emulator's tables across restarts of ``make run``.

The AWS emulator holds everything in memory, while the Temporal dev server keeps its workflows in
a SQLite file. Without this, a process still waiting for approval when the stack stops would find
its record gone after a restart, and fail when approved. The supervisor saves both tables to the
data folder on a clean stop and loads them back at start, before the worker runs. Queues and the
topic are not kept: a command message in flight at the stop is lost (its callback wait times out).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3

from local_stack.settings import REGION

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

SNAPSHOT_FILE = "dynamodb.json"
BATCH = 25  # the most BatchWriteItem takes at once


def save_tables(dynamodb: DynamoDBClient, tables: Iterable[str], data_dir: Path) -> int:
    """Write every item of ``tables`` to the snapshot file; the number of items saved."""
    snapshot: dict[str, list[dict[str, Any]]] = {}
    for table in tables:
        items: list[dict[str, Any]] = []
        for page in dynamodb.get_paginator("scan").paginate(TableName=table):
            items.extend(page.get("Items", []))
        snapshot[table] = items
    path = data_dir / SNAPSHOT_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"tables": snapshot}))
    os.replace(temporary, path)  # a stop interrupted here leaves the previous snapshot whole
    return sum(len(items) for items in snapshot.values())


def load_tables(dynamodb: DynamoDBClient, tables: Iterable[str], data_dir: Path) -> int:
    """Put the saved items back into ``tables`` (which must exist); the number of items loaded."""
    path = data_dir / SNAPSHOT_FILE
    if not path.exists():
        return 0
    saved: dict[str, list[dict[str, Any]]] = json.loads(path.read_text()).get("tables", {})
    loaded = 0
    for table in tables:
        items = saved.get(table, [])
        for start in range(0, len(items), BATCH):
            requests: list[Any] = [
                {"PutRequest": {"Item": item}} for item in items[start : start + BATCH]
            ]
            pending: dict[str, Any] = {table: requests}
            while pending:  # the emulator never throttles, real DynamoDB might
                response = dynamodb.batch_write_item(RequestItems=pending)
                pending = dict(response.get("UnprocessedItems", {}))
        loaded += len(items)
    return loaded


class Snapshot:
    """One stack's tables and their snapshot file: ``load`` at start, ``save`` at a clean stop."""

    def __init__(
        self,
        endpoint_url: str,
        credentials: tuple[str, str],
        tables: Sequence[str],
        data_dir: Path,
    ) -> None:
        self._endpoint_url = endpoint_url
        self._credentials = credentials
        self._tables = list(tables)
        self._data_dir = data_dir
        self._loaded = False

    async def load(self) -> int:
        """Put the saved items back; the number loaded."""
        loaded = await asyncio.to_thread(load_tables, self._client(), self._tables, self._data_dir)
        self._loaded = True
        return loaded

    async def save(self) -> int | None:
        """Save every item; the number saved, or None before ``load`` ran.

        Saving before the last snapshot was loaded back would overwrite it with empty tables.
        """
        if not self._loaded:
            return None
        return await asyncio.to_thread(save_tables, self._client(), self._tables, self._data_dir)

    def _client(self) -> DynamoDBClient:
        access_key, secret_key = self._credentials
        return boto3.session.Session().client(
            "dynamodb",
            endpoint_url=self._endpoint_url,
            region_name=REGION,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
        )
