"""The AWS emulator of ``make run``: moto's server, with what it holds kept on disk.

moto keeps everything in memory, so whatever it held was lost whenever the emulator stopped
without a chance to save it (kill -9 of the supervisor, the emulator dying on its own): a process
then found its record gone, or its command-one message never reached the simulator. This wraps
moto's server app in a WSGI middleware that writes every DynamoDB write moto accepted to a
journal (``common/journal.py``), fsynced before the answer goes out, and replays the journal at
start before serving. A write is therefore on disk before anyone hears it succeeded; one that was
not acknowledged may or may not be there, as with any database. moto applies a write before it
can be journaled (only moto knows whether its conditions hold), so a journal that cannot be
written (a full disk, an I/O error) stops the emulator at once, unanswered
(``common.journal.fail_stop``, exit 74): answering 500 and carrying on would let readers see a
write that a restart, rebuilding from the journal, does not have. The journal is compacted at
start and as it grows: it is rewritten as the requests that rebuild the tables as they are
(create, time to live, items). Queues, their messages, topics and subscriptions are kept the same
way in a journal of their own, hooked into moto's backends (``local_stack/durable_messaging.py``).

Why not moto's own recorder (``MOTO_ENABLE_RECORDING``): it appends every request of every
service, reads included, with no fsync and no compaction, and replays them all over HTTP. The
SQS long polls of the simulator and the inbox alone add a request every few seconds, and each
replayed long poll waits its full 10 s on an empty queue; replayed publishes and sends would
mail the approvers again, and a replayed DeleteMessage names a receipt handle that no longer
exists, so every message ever deleted would come back.

``python -m local_stack.aws_emulator -H HOST -p PORT --journal PATH --messaging-journal PATH``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from common.journal import Entry, Journal, fail_stop
from local_stack.durable_messaging import DurableMessaging

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("aws_emulator")

TARGET_PREFIX = "DynamoDB_20120810."
# Calls that change nothing; every other DynamoDB call moto answers with success is journaled.
READS = frozenset(
    {
        "BatchGetItem",
        "DescribeBackup",
        "DescribeContinuousBackups",
        "DescribeEndpoints",
        "DescribeLimits",
        "DescribeTable",
        "DescribeTimeToLive",
        "GetItem",
        "ListBackups",
        "ListTables",
        "ListTagsOfResource",
        "Query",
        "Scan",
        "TransactGetItems",
    }
)
COMPACT_AFTER = 10_000
BATCH = 25  # the most BatchWriteItem takes at once


class Answer:
    """What the wrapped app said: status, headers and the whole body."""

    def __init__(self, app: WSGIApplication, environ: WSGIEnvironment) -> None:
        self.status = "500 INTERNAL SERVER ERROR"
        self.headers: list[tuple[str, str]] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            self.status, self.headers = status, headers
            return lambda data: None

        chunks = app(environ, start_response)
        try:
            self.body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    @property
    def ok(self) -> bool:
        return self.status.startswith("2")

    def json(self) -> Any:
        return json.loads(self.body)


class DurableDynamoDB:
    """WSGI middleware: DynamoDB writes journaled before they are answered, replayed at start.

    DynamoDB calls go through one lock, so the journal holds the writes in the order moto
    applied them (a replay then meets every condition as the original did), and no reader sees
    a write that is not yet on disk.
    """

    def __init__(
        self,
        app: WSGIApplication,
        path: Path,
        compact_after: int = COMPACT_AFTER,
        on_journal_failure: Callable[[Path, OSError], NoReturn] = fail_stop,
    ) -> None:
        self._app = app
        self._on_journal_failure = on_journal_failure
        self._lock = threading.Lock()
        self._compact_after = compact_after
        # Who wrote (access key, region): moto keeps tables per account and region.
        self._scopes: set[tuple[str, str]] = set()
        self._journal, entries = Journal.open(path)
        replayed = sum(1 for entry in entries if self._replay(entry))
        self._compact()
        self.restored = replayed
        self._compacted_size = self._journal.entries

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
        if not target.startswith(TARGET_PREFIX):
            return self._app(environ, start_response)
        operation = target.removeprefix(TARGET_PREFIX)
        body = _read_body(environ)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        with self._lock:
            answer = Answer(self._app, environ)
            if answer.ok and operation not in READS:
                scope = _scope(str(environ.get("HTTP_AUTHORIZATION", "")))
                entry = {
                    "op": operation,
                    "key": scope[0],
                    "region": scope[1],
                    "body": body.decode(),
                }
                try:
                    self._journal.append(entry)
                except OSError as err:
                    # moto holds the write already; still under the lock, so no reader has seen
                    # it. Exit before anyone does (``fail_stop``), rather than answer 500.
                    self._on_journal_failure(self._journal.path, err)
                self._scopes.add(scope)
                if self._journal.entries > self._compacted_size + self._compact_after:
                    self._compact_while_serving()
        start_response(answer.status, answer.headers)
        return [answer.body]

    def close(self) -> None:
        self._journal.close()

    # -- replay and compaction ------------------------------------------------------------------

    def _call(self, operation: str, scope: tuple[str, str], body: str | dict[str, Any]) -> Answer:
        """One DynamoDB call straight to moto's app, neither locked nor journaled."""
        from werkzeug.test import EnvironBuilder

        access_key, region = scope
        credential = f"{access_key}/20200101/{region}/dynamodb/aws4_request"
        data = body if isinstance(body, str) else json.dumps(body)
        # moto reads the service and region from the credential scope and checks no signature.
        headers: dict[str, str] = {
            "X-Amz-Target": TARGET_PREFIX + operation,
            "Authorization": f"AWS4-HMAC-SHA256 Credential={credential}, "
            "SignedHeaders=host, Signature=replayed",
        }
        builder = EnvironBuilder(
            method="POST",
            path="/",
            base_url="http://localhost",
            headers=list(headers.items()),
            content_type="application/x-amz-json-1.0",
            data=data.encode(),
        )
        try:
            return Answer(self._app, builder.get_environ())
        finally:
            builder.close()

    def _replay(self, entry: Entry) -> bool:
        try:
            scope = (str(entry["key"]), str(entry["region"]))
            answer = self._call(str(entry["op"]), scope, str(entry["body"]))
        except (KeyError, TypeError) as err:
            log.warning("journal: skipping an entry it cannot read (%s)", err)
            return False
        self._scopes.add(scope)
        if not answer.ok:
            # Journaled writes succeeded once, in this order; say so if one does not now.
            log.warning("journal: replayed %s answered %s", entry.get("op"), answer.status)
        return answer.ok

    def _compact_while_serving(self) -> None:
        """Compact, and carry on if that fails: the write before it is journaled already, and
        a failed rewrite leaves the journal as it was (only longer)."""
        try:
            self._compact()
        except OSError as err:
            self._compacted_size = self._journal.entries  # try again after as many more writes
            log.warning("journal not compacted (%s); it goes on growing", err)

    def _compact(self) -> None:
        """Rewrite the journal as the few calls that rebuild the tables as they are now."""
        before = self._journal.entries
        self._journal.rewrite(list(self._rebuild()))
        self._compacted_size = self._journal.entries
        log.info("journal compacted: %d entries -> %d", before, self._journal.entries)

    def _rebuild(self) -> Iterator[Entry]:
        for scope in sorted(self._scopes):
            for table in self._tables(scope):
                description = self._call("DescribeTable", scope, {"TableName": table}).json()
                yield _entry(scope, "CreateTable", create_table_request(description["Table"]))
                ttl = self._call("DescribeTimeToLive", scope, {"TableName": table}).json()
                ttl = ttl.get("TimeToLiveDescription", {})
                if ttl.get("TimeToLiveStatus") in ("ENABLED", "ENABLING"):
                    specification = {"Enabled": True, "AttributeName": ttl["AttributeName"]}
                    yield _entry(
                        scope,
                        "UpdateTimeToLive",
                        {"TableName": table, "TimeToLiveSpecification": specification},
                    )
                items = list(self._items(scope, table))
                for start in range(0, len(items), BATCH):
                    requests = [{"PutRequest": {"Item": i}} for i in items[start : start + BATCH]]
                    yield _entry(scope, "BatchWriteItem", {"RequestItems": {table: requests}})

    def _tables(self, scope: tuple[str, str]) -> Iterator[str]:
        request: dict[str, Any] = {}
        while True:
            page = self._call("ListTables", scope, request).json()
            yield from page.get("TableNames", [])
            if "LastEvaluatedTableName" not in page:
                return
            request = {"ExclusiveStartTableName": page["LastEvaluatedTableName"]}

    def _items(self, scope: tuple[str, str], table: str) -> Iterator[dict[str, Any]]:
        request: dict[str, Any] = {"TableName": table}
        while True:
            page = self._call("Scan", scope, request).json()
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def create_table_request(table: dict[str, Any]) -> dict[str, Any]:
    """The CreateTable call that makes ``table`` (a DescribeTable answer) again, empty."""
    billing = table.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED")
    provisioned = billing == "PROVISIONED"

    def throughput(described: dict[str, Any]) -> dict[str, Any]:
        units = described.get("ProvisionedThroughput", {})
        return {
            "ReadCapacityUnits": units.get("ReadCapacityUnits", 1) or 1,
            "WriteCapacityUnits": units.get("WriteCapacityUnits", 1) or 1,
        }

    request: dict[str, Any] = {
        "TableName": table["TableName"],
        "AttributeDefinitions": table["AttributeDefinitions"],
        "KeySchema": table["KeySchema"],
        "BillingMode": billing,
    }
    if provisioned:
        request["ProvisionedThroughput"] = throughput(table)
    indexes = []
    for index in table.get("GlobalSecondaryIndexes", []):
        made = {k: index[k] for k in ("IndexName", "KeySchema", "Projection")}
        if provisioned:
            made["ProvisionedThroughput"] = throughput(index)
        indexes.append(made)
    if indexes:
        request["GlobalSecondaryIndexes"] = indexes
    local = [
        {k: index[k] for k in ("IndexName", "KeySchema", "Projection")}
        for index in table.get("LocalSecondaryIndexes", [])
    ]
    if local:
        request["LocalSecondaryIndexes"] = local
    stream = table.get("StreamSpecification")
    if stream and stream.get("StreamEnabled"):
        request["StreamSpecification"] = stream
    return request


def _entry(scope: tuple[str, str], operation: str, body: dict[str, Any]) -> Entry:
    access_key, region = scope
    return {"op": operation, "key": access_key, "region": region, "body": json.dumps(body)}


def _read_body(environ: WSGIEnvironment) -> bytes:
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        return bytes(stream.read(int(length)))
    # Chunked: the server marks the stream as ending at the body's end.
    return bytes(stream.read()) if environ.get("wsgi.input_terminated") else b""


def _scope(authorization: str) -> tuple[str, str]:
    """(access key, region) from a SigV4 header: moto keeps tables per account and region."""
    try:
        credential = authorization.split(",")[0].split()[1].removeprefix("Credential=")
        access_key, _date, region, _service, _ = credential.split("/")
    except (IndexError, ValueError):
        return ("unsigned", "us-east-1")
    return (access_key, region)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m local_stack.aws_emulator")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    parser.add_argument("--journal", type=Path, required=True, help="the DynamoDB journal file")
    parser.add_argument(
        "--messaging-journal",
        type=Path,
        required=True,
        help="the journal of the SQS queues and messages and the SNS topics and subscriptions",
    )
    parser.add_argument("--compact-after", type=int, default=COMPACT_AFTER)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    # As moto_server does: its queue URLs and a few others name the port.
    os.environ.setdefault("MOTO_PORT", str(args.port))
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    moto_app = DomainDispatcherApplication(create_backend_app)
    app = DurableDynamoDB(moto_app, args.journal, args.compact_after)
    log.info("restored %d DynamoDB write(s) from %s", app.restored, args.journal)
    messaging = DurableMessaging.open(args.messaging_journal, args.compact_after)
    restored = ", ".join(f"{n} {what}" for what, n in messaging.restored.items())
    log.info("restored %s from %s", restored, args.messaging_journal)
    # Every write is on disk already: a stop needs no saving, just an exit code of 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
        messaging.close()


if __name__ == "__main__":
    main()
