"""The original's ``executeOnce``: remember a completed send so a retried activity skips it.

The record is written after the send succeeds. A crash between the two sends again on the next
attempt; the ``Idempotency-Key`` the send carries lets the downstream system drop that duplicate.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# The table's TTL attribute (epoch seconds); DynamoDB deletes expired items in the background.
EXPIRES_AT = "expires_at"


class IdempotencyStore:
    def __init__(
        self,
        dynamodb: DynamoDBClient,
        table_name: str,
        ttl: timedelta = timedelta(hours=24),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dynamodb = dynamodb
        self._table = table_name
        self._ttl = ttl
        self._clock = clock

    def get(self, key: str) -> dict[str, Any] | None:
        """The detail recorded for ``key``, or None when nothing live is recorded.

        TTL deletion is lazy (it can lag by days), so an expired item counts as absent here.
        """
        response = self._dynamodb.get_item(
            TableName=self._table, Key={"key": {"S": key}}, ConsistentRead=True
        )
        item = response.get("Item")
        if item is None:
            return None
        if int(item[EXPIRES_AT]["N"]) <= self._clock():
            return None
        detail: dict[str, Any] = json.loads(item["detail"]["S"])
        return detail

    def record(self, key: str, detail: dict[str, Any]) -> None:
        """Remember that ``key`` was done; ``detail`` must be JSON-serialisable."""
        now = self._clock()
        self._dynamodb.put_item(
            TableName=self._table,
            Item={
                "key": {"S": key},
                "detail": {"S": json.dumps(detail, separators=(",", ":"), default=str)},
                "recorded_at": {"N": str(int(now))},
                EXPIRES_AT: {"N": str(int(now + self._ttl.total_seconds()))},
            },
        )
