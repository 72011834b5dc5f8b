"""The simulator's durable book of work: every command it took, and how far each has got.

A well-behaved downstream system does not forget work it acknowledged. Each change is written
to the journal (``common/journal.py``, fsynced) before the simulator acts on it or answers, and
replayed at start, so after a restart, kill -9 included, every unfinished command resumes where
it was: the same planned delay and outcome, the same callback payload once made, the callback
attempts already spent. A key counts as done only once its callback was delivered or refused for
good, never when it was merely received. A callback whose bounded tries ran out is not done: the
job is marked as given up and kept, and a resend of its key, a redrive or the next start calls
back again with a fresh budget of tries.

The journal also keeps the fence: the highest lease id seen per resource rises in the same entry
that takes the command carrying it, so the lease and the work it admitted are durable together.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.journal import Entry, Journal
from simulator.fence import Fence, Fences

log = logging.getLogger("simulator")

# Rewrite the journal once it holds this many entries more than the state it rebuilds.
COMPACT_AFTER = 1000
# A finished key is kept this long after its deadline (or receipt, without one): no sender
# resends a command after its own callback wait is over.
KEEP_FINISHED = timedelta(days=7)


class DownstreamCommand(BaseModel):
    """The body both commands carry (see ``activities/commands.py``); the fence is read apart."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    process_id: str = Field(min_length=1)
    command: str = Field(min_length=1)
    callback_url: str = Field(pattern=r"^https?://")
    idempotency_key: str = Field(min_length=1)
    deadline: datetime | None = None
    # Where to heartbeat while working; older senders leave it out: <callback_url>/heartbeat.
    heartbeat_url: str | None = Field(None, pattern=r"^https?://")
    # A redrive of the process that sent this key before (1, 2, ...); 0: the first sending.
    redrive: int = Field(0, ge=0)
    # The W3C trace context that came with the command (HTTP headers or SQS message attributes,
    # set by the receiver, never read from the body); passed on with the callback.
    trace_context: dict[str, str] = Field(default_factory=dict)


class Job(BaseModel):
    """One command taken, with its plan and its progress; journaled whole at compaction."""

    model_config = ConfigDict(extra="ignore")

    command: DownstreamCommand
    via: Literal["sqs", "http"]
    received_at: datetime
    fence: Fence | None = None
    # Decided once, when the command is taken, so a resumed job keeps its fate.
    delay: float = 0.0
    fails: bool = False
    # Which setting made it fail, said in its callback: the settings of a later start may differ.
    fails_because: str | None = None
    # Why the command was refused (an SQS command is refused with a failed callback).
    refused: str | None = None
    # The callback body, made when the work ends; resent as it is after a restart.
    payload: dict[str, Any] | None = None
    callback_attempts: int = 0
    callback_status: int | None = None
    done: bool = False
    # The last budget of callback tries ran out (the key is not done: its result is still owed).
    gave_up: bool = False
    # Redrives of the key received (``DownstreamCommand.redrive`` higher than the last one's).
    redrives: int = 0
    # Repeats of the key received (resends, redeliveries) and heartbeats sent; not journaled.
    duplicates: int = 0
    heartbeats: int = 0

    @property
    def key(self) -> str:
        return self.command.idempotency_key

    @property
    def heartbeat_url(self) -> str:
        return self.command.heartbeat_url or f"{self.command.callback_url}/heartbeat"

    @property
    def due(self) -> datetime:
        """When the simulated work ends."""
        return self.received_at + timedelta(seconds=self.delay)

    @property
    def outcome(self) -> Literal["pending", "succeeded", "failed", "fenced"]:
        if self.refused is not None:
            return "fenced"
        if self.payload is None:
            return "pending"
        return "failed" if self.payload.get("status") == "failed" else "succeeded"


class WorkBook:
    """The jobs and the fence, rebuilt from the journal at start and journaled on each change.

    Without a journal (``path=None``) it keeps everything in memory only.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.jobs: dict[str, Job] = {}
        self.fences = Fences()
        self._journal: Journal | None = None
        if path is not None:
            self._journal, entries = Journal.open(path)
            for entry in entries:
                self._replay(entry)
            self._compact()

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()

    # -- changes: each journaled before it takes effect ----------------------------------------

    def take(self, job: Job) -> None:
        """Hold ``job`` (accepted, or refused with its failed callback still to deliver).

        Taking a key again (a redrive) journals the job's new state whole, replacing the old.
        """
        self._write({"kind": "job", "job": _dump(job)})
        self._hold(job)

    def worked(self, key: str, payload: dict[str, Any]) -> None:
        self._write({"kind": "worked", "key": key, "payload": payload})
        self.jobs[key].payload = payload

    def attempted(self, key: str, status: int | None) -> None:
        """One callback attempt ended with ``status`` (None: no answer)."""
        self._write({"kind": "attempt", "key": key, "status": status})
        job = self.jobs[key]
        job.callback_attempts += 1
        job.callback_status = status

    def finished(self, key: str) -> None:
        """The callback was delivered or refused for good: the key is done."""
        self._write({"kind": "done", "key": key})
        self.jobs[key].done = True
        self._maybe_compact()

    def gave_up(self, key: str) -> None:
        """The callback's tries ran out: the result is still owed, the key is not done."""
        self._write({"kind": "gave_up", "key": key})
        self.jobs[key].gave_up = True

    def retry(self, key: str) -> None:
        """A job that gave up calls back again, with a fresh budget of tries."""
        self._write({"kind": "retry", "key": key})
        job = self.jobs[key]
        job.callback_attempts, job.gave_up = 0, False

    # -- reading ----------------------------------------------------------------------------

    def unfinished(self) -> Iterator[Job]:
        return (job for job in self.jobs.values() if not job.done)

    def newest(self, limit: int) -> list[Job]:
        jobs = list(self.jobs.values())[-limit:]
        return jobs[::-1]

    # -- the journal --------------------------------------------------------------------------

    def _hold(self, job: Job) -> None:
        self.jobs[job.key] = job
        # The lease rises with the work it admitted, in the same entry.
        if job.fence is not None and job.refused is None:
            self.fences.observe(job.fence)

    def _write(self, entry: Entry) -> None:
        if self._journal is not None:
            self._journal.append(entry)

    def _replay(self, entry: Entry) -> None:
        try:
            kind = entry.get("kind")
            if kind == "job":
                self._hold(Job.model_validate(entry["job"]))
            elif kind == "fence":
                self.fences.observe(Fence(str(entry["resource"]), int(entry["lease_id"])))
            elif entry.get("key") in self.jobs:
                job = self.jobs[entry["key"]]
                if kind == "worked":
                    job.payload = dict(entry["payload"])
                elif kind == "attempt":
                    job.callback_attempts += 1
                    job.callback_status = entry["status"]
                elif kind == "done":
                    job.done = True
                elif kind == "gave_up":
                    job.gave_up = True
                elif kind == "retry":
                    job.callback_attempts, job.gave_up = 0, False
        except (KeyError, TypeError, ValueError, ValidationError) as err:
            log.warning("journal: skipping an entry it cannot read (%s): %s", err, entry)

    def _maybe_compact(self) -> None:
        if self._journal is not None and self._journal.entries > len(self.jobs) + COMPACT_AFTER:
            self._compact()

    def _compact(self) -> None:
        """Rewrite the journal as one entry per lease and per job still kept."""
        if self._journal is None:
            return
        now = datetime.now(UTC)
        for key, job in list(self.jobs.items()):
            if _aware(job.command.deadline or job.received_at) + KEEP_FINISHED >= now:
                continue
            if job.gave_up:
                # Long past its sender's wait, nobody will resend it nor take its result.
                log.warning("journal: dropping %s, whose callback was never delivered", key)
            if job.done or job.gave_up:
                del self.jobs[key]
        fences: list[Entry] = [
            {"kind": "fence", "resource": resource, "lease_id": lease}
            for resource, lease in self.fences.highest.items()
        ]
        jobs: list[Entry] = [{"kind": "job", "job": _dump(job)} for job in self.jobs.values()]
        self._journal.rewrite(fences + jobs)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _dump(job: Job) -> dict[str, Any]:
    return job.model_dump(mode="json", exclude={"duplicates", "heartbeats"})
