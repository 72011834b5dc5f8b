"""Bring in the tables an earlier ``make run`` saved to ``dynamodb.json``, once.

Earlier versions kept the emulator's tables by saving them at a clean stop only, so a kill lost
every write since. The emulator now journals each write as it happens
(``local_stack/aws_emulator.py``); a data folder from before still has its last snapshot, which
is loaded through the emulator (and so into its journal) at the first start, then renamed so it
is never loaded over newer data again.
"""

from __future__ import annotations

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
IMPORTED_FILE = "dynamodb.json.imported"
BATCH = 25  # the most BatchWriteItem takes at once


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


def import_snapshot(
    endpoint_url: str, credentials: tuple[str, str], tables: Sequence[str], data_dir: Path
) -> int:
    """Load ``dynamodb.json`` if there is one and rename it; the number of items loaded."""
    path = data_dir / SNAPSHOT_FILE
    if not path.exists():
        return 0
    access_key, secret_key = credentials
    dynamodb = boto3.session.Session().client(
        "dynamodb",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
    )
    loaded = load_tables(dynamodb, tables, data_dir)
    os.replace(path, path.with_name(IMPORTED_FILE))
    return loaded
