"""``python -m tests.workflow.record_histories VERSION [--force] [--only NAMES]``: see the package
docstring."""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import logging
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.support.temporal import start_dev_server
from tests.workflow.record_histories import (
    mutex_scenarios,
    ops_scenarios,
    policy_scenarios,
    process_scenarios,
)
from tests.workflow.record_histories.recording import Recording

HISTORIES = Path(__file__).resolve().parents[2] / "histories"
Scenario = Callable[[Recording], Awaitable[None]]
SCENARIOS: list[Scenario] = [
    *process_scenarios.SCENARIOS,
    *policy_scenarios.SCENARIOS,
    *mutex_scenarios.SCENARIOS,
    *ops_scenarios.SCENARIOS,
]
# Scenarios run side by side (each on its own task queue and lock resource); a few at a time
# keep a two-core machine responsive enough for second-long timeouts.
CONCURRENCY = 6
SCENARIO_DEADLINE = 120.0


async def record(
    staging: Path, scenarios: list[Scenario] = SCENARIOS
) -> tuple[dict[str, int], list[str]]:
    """Run the scenarios on one dev server; the histories, and what went wrong."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The scenarios fail processes on purpose; their warnings would bury anything unexpected.
    for noisy in ("temporalio.workflow", "temporalio.activity"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    async with await start_dev_server() as env:
        recording = Recording(env.client, staging)
        limit = asyncio.Semaphore(CONCURRENCY)

        async def run(scenario: Scenario) -> None:
            async with limit, asyncio.timeout(SCENARIO_DEADLINE):
                await scenario(recording)

        outcomes = await asyncio.gather(*(run(s) for s in scenarios), return_exceptions=True)
    failures = [
        f"{scenario.__name__}:\n{''.join(traceback.format_exception(outcome))}"
        for scenario, outcome in zip(scenarios, outcomes, strict=True)
        if isinstance(outcome, BaseException)
    ]
    return recording.saved, failures


def select(only: str, scenarios: list[Scenario] = SCENARIOS) -> list[Scenario]:
    """The scenarios ``--only`` names: exact names, comma-separated; ``NAME*`` (a shell pattern)
    for every name it matches. Empty: all of them.

    A bare name never stands for the names it begins: as a prefix, ``--only ops_heartbeat``
    also recorded ``ops_heartbeats_kept_alive``; a prefix picks up scenarios nobody named.
    """
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    if not patterns:
        return list(scenarios)
    chosen: list[Scenario] = []
    for pattern in patterns:
        matched = [s for s in scenarios if fnmatch.fnmatchcase(s.__name__, pattern)]
        if not matched:
            longer = [s.__name__ for s in scenarios if s.__name__.startswith(pattern)]
            hint = f"; {pattern}* would record {', '.join(longer)}" if longer else ""
            raise ValueError(f"no scenario is named {pattern}{hint}")
        chosen += [s for s in matched if s not in chosen]
    return chosen


def clashes(staging: Path, folder: Path) -> list[str]:
    """The files just recorded that ``folder`` already holds, by name.

    Checked on the files themselves, not on the scenarios' names: a scenario's files are named
    for the workflow they hold (``lock_contention`` writes ``process_lock_timeout`` and
    ``mutex_queued_requests_cancelled``), so a check by scenario name let ``--only`` replace
    another group's histories without ``--force``.
    """
    return sorted(path.name for path in staging.glob("*.json") if (folder / path.name).exists())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.workflow.record_histories",
        description="Record workflow histories after a deliberate, versioned workflow change.",
    )
    parser.add_argument("version", help="folder under tests/histories, e.g. v2")
    parser.add_argument(
        "--force", action="store_true", help="overwrite the recorded files of an existing folder"
    )
    parser.add_argument(
        "--only",
        metavar="NAMES",
        default="",
        help="record only these scenarios: exact names, comma-separated, or a pattern "
        "(e.g. 'process_policy_*'), adding their files to a folder that may hold others; "
        "never over a file already there (unless --force)",
    )
    args = parser.parse_args(argv)
    if not re.fullmatch(r"v[0-9]+", args.version):
        parser.error(f"version must look like v2, not {args.version!r}")
    folder = HISTORIES / args.version
    try:
        scenarios = select(args.only)
    except ValueError as err:
        parser.error(str(err))
    if any(folder.glob("*.json")) and not args.force and not args.only:
        parser.error(
            f"{folder} already holds histories: record a changed workflow into a new version "
            "folder, never over the histories it must still replay (--force to overwrite)"
        )
    started = time.monotonic()
    # A failed scenario leaves the version folder as it was: files move in only if all passed.
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-recording-", dir=HISTORIES))
    try:
        saved, failures = asyncio.run(record(staging, scenarios))
        if failures:
            print("recording failed, nothing written:", *failures, sep="\n", file=sys.stderr)
            return 1
        taken = clashes(staging, folder) if not args.force else []
        if taken:
            print(
                f"{folder} already holds {', '.join(taken)}: nothing written (--force to "
                "overwrite them, or record into a new version folder)",
                file=sys.stderr,
            )
            return 1
        folder.mkdir(exist_ok=True)
        for path in staging.glob("*.json"):
            path.replace(folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for name, events in sorted(saved.items()):
        print(f"{folder.name}/{name}.json: {events} events")
    print(f"recorded {len(saved)} histories in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
