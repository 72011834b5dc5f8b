"""What ``make run`` changes in the Temporal dev server's defaults, and why.

The dev server keeps every workflow on one history shard, and the shard's transfer queue (the
server's outbox: a signal to another workflow, a task handed to a worker) is read at most
``history.transferProcessorMaxPollRPS`` times a second, 20 by default. Once anything is busy,
every hop between two workflows waits for the next read: about 50 ms each, four of them in a
lock handoff (release -> mutex -> grant), so about 200 ms a handoff where the work takes 30 ms
(``python -m benchmarks --only lock_path`` with and without it: docs/testing.md). Reading more
often costs nothing while idle (the queue is read when a task is written, not on a clock).

A cluster spreads its workflows over many shards, each with its own queue and limit, so one
busy mutex rarely meets the limit there; operators of a small cluster (few shards) can raise
the same key in their dynamic config (docs/operations.md, "Server pacing").
"""

from __future__ import annotations

from collections.abc import Mapping

DYNAMIC_CONFIG: Mapping[str, str] = {"history.transferProcessorMaxPollRPS": "1000"}


def dynamic_config_args(overrides: Mapping[str, str] | None = None) -> list[str]:
    """``--dynamic-config-value KEY=VALUE`` for each of make run's values, ``overrides`` winning
    by key (values are JSON, as the ``temporal`` CLI reads them)."""
    values = {**DYNAMIC_CONFIG, **(overrides or {})}
    return [
        arg for key, value in values.items() for arg in ("--dynamic-config-value", f"{key}={value}")
    ]
