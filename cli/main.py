"""``approval-flow``: start processes and look at them from a terminal.

    approval-flow start --requested-by alice --description "deploy v2"
    approval-flow status process-…
    approval-flow cancel process-… [--wait]
    approval-flow redrive process-…
    approval-flow list [--status failed]
    approval-flow lock [--resource NAME]
    approval-flow replay [--closed-within 7d]
    approval-flow keys

Every command takes ``--json`` for scripts. The connection comes from the same environment as
the worker (``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ...); the defaults reach ``make run``.
Exit codes: 0 done, 1 not found, not possible, or (replay) a history would break; 2 bad usage;
3 Temporal unreachable.

Each command lives in its own module (``cli/start.py``, ...) and returns ``(document, text)``;
this one parses, connects, prints through one ``Output`` and turns errors into exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, Protocol, TextIO

from pydantic import ValidationError
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from cli import cancel, keys, lock, redrive, replay, start, status
from cli import list as listing
from cli.output import EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, CliError, CommandFailed, Output
from cli.settings import CliSettings
from common.settings import describe_error
from common.temporal import TemporalAddressInvalid, TemporalUnavailable, connect, exit_process
from common.tracing import configure as configure_tracing


class Command(Protocol):
    """What each command module provides (mypy checks the modules against it)."""

    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    async def run(
        self, args: argparse.Namespace, client: Client, settings: CliSettings
    ) -> tuple[dict[str, Any], str]: ...


class LocalCommand(Protocol):
    """A command that needs no Temporal: it reads the settings only."""

    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(
        self, args: argparse.Namespace, settings: CliSettings
    ) -> tuple[dict[str, Any], str]: ...


# In the order ``--help`` lists them.
COMMANDS: dict[str, Command] = {
    "start": start,
    "status": status,
    "cancel": cancel,
    "redrive": redrive,
    "list": listing,
    "lock": lock,
    "replay": replay,
}
LOCAL_COMMANDS: dict[str, LocalCommand] = {"keys": keys}


class Parser(argparse.ArgumentParser):
    """argparse, saying a usage error in one line (it would print the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document")
    parser = Parser(
        prog="approval-flow",
        description="Start approval processes and inspect them on Temporal.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    every: list[tuple[str, Command | LocalCommand]] = [*COMMANDS.items(), *LOCAL_COMMANDS.items()]
    for name, module in every:
        module.add_arguments(commands.add_parser(name, parents=[common], help=module.HELP))
    return parser


async def execute(
    args: argparse.Namespace, client: Client, settings: CliSettings, out: Output
) -> None:
    """Run one parsed command against a connected client."""
    try:
        document, text = await COMMANDS[args.command].run(args, client, settings)
    except CommandFailed as failed:
        out.emit(failed.document, failed.text)
        raise
    out.emit(document, text)


# What a command can refuse from its arguments alone, asked before connecting.
CHECKS: dict[str, Callable[[argparse.Namespace, CliSettings], None]] = {
    "start": start.check_arguments
}


async def run_async(args: argparse.Namespace, settings: CliSettings, out: Output) -> None:
    if (check := CHECKS.get(args.command)) is not None:
        check(args, settings)
    client = await connect(settings)
    try:
        await execute(args, client, settings, out)
    except RPCError as err:
        if err.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            raise CliError(
                f"Temporal at {settings.temporal_address} stopped answering: {err.message}",
                EXIT_UNREACHABLE,
            ) from err
        raise CliError(f"Temporal refused: {err.message}") from err


def run(argv: Sequence[str] | None = None, stdout: TextIO | None = None) -> int:
    """Parse, run, and turn every expected failure into one line on stderr and an exit code."""
    args = build_parser().parse_args(argv)
    out = Output(as_json=args.json, stream=stdout or sys.stdout)
    try:
        settings = CliSettings()
    except ValidationError as err:
        print(f"approval-flow: {describe_error(err, CliSettings)}", file=sys.stderr)
        return EXIT_USAGE
    # Before connecting: the client carries it. Quiet: stderr holds only our one-line answers.
    configure_tracing("cli", program="approval-flow", quiet=True)
    try:
        if args.command in LOCAL_COMMANDS:
            out.emit(*LOCAL_COMMANDS[args.command].run(args, settings))
        else:
            asyncio.run(run_async(args, settings, out))
    except TemporalAddressInvalid as err:
        print(f"approval-flow: {err}", file=sys.stderr)
        return EXIT_USAGE
    except TemporalUnavailable as err:
        reason = str(err)
        if "ConnectionRefused" in reason:  # the usual case; the transport's details add nothing
            reason = f"cannot reach Temporal at {settings.temporal_address}: connection refused"
        print(f"approval-flow: {reason} (is `make run` running?)", file=sys.stderr)
        return EXIT_UNREACHABLE
    except CliError as err:
        print(f"approval-flow: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader stopped reading (``| head -2``) after taking what it wanted: not a failure.
        # Nothing more can be printed; exit_process skips the flush that would fail again.
        return EXIT_OK
    return EXIT_OK


def main() -> None:
    # ``exit_process`` keeps the exit status even if the SDK aborts interpreter finalisation.
    exit_process(run())


if __name__ == "__main__":
    main()
