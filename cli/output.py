"""What every command shares on the way out: exit codes, the one-line error, JSON or text."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

PROGRAM = "approval-flow"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class CliError(Exception):
    """A failure reported as one line on stderr, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class CommandFailed(CliError):
    """The command ran to the end and has its answer to print, but the answer is a failure.

    The answer goes to stdout as usual (text or ``--json``); ``message`` is the one line on stderr.
    """

    def __init__(self, message: str, document: Any, text: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message, code)
        self.document = document
        self.text = text


@dataclass
class Output:
    """Where results go: ``--json`` prints one JSON document, otherwise readable lines."""

    as_json: bool
    stream: TextIO

    def emit(self, document: Any, text: str) -> None:
        """Print and flush, so a reader that stops early (``| head``) is noticed here."""
        if self.as_json:
            print(json.dumps(document, indent=2, default=str), file=self.stream)
        else:
            print(text, file=self.stream)
        self.stream.flush()


def when(moment: datetime | None) -> str:
    """A moment as people read it in a terminal: UTC, to the second."""
    if moment is None:
        return "-"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def printable(text: str) -> str:
    """``text`` with every character a terminal would not print as itself escaped (``\\x1b``,
    ``\\n``, ``\\u202e``): a value the CLI did not write (a name or comment from an approval
    link, a downstream's error) cannot move the cursor, clear the screen, reorder the line or
    start a line that looks like the CLI's own."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def program(argv0: str | None = None, search_path: str | None = None) -> str:
    """How to type this CLI again, for hints printed to copy: ``approval-flow`` when that name
    finds this very script on PATH (an activated venv, an image), else its path from here
    (``.venv/bin/approval-flow`` in a fresh clone)."""
    script = Path(sys.argv[0] if argv0 is None else argv0)
    if script.name != PROGRAM:  # ``python -m cli``: the console script beside the interpreter
        script = Path(sys.executable).parent / PROGRAM
    if not script.is_file():
        return PROGRAM
    found = shutil.which(PROGRAM, path=search_path)
    if found is not None and Path(found).resolve() == script.resolve():
        return PROGRAM
    try:
        relative = script.absolute().relative_to(Path.cwd())
    except ValueError:
        return str(script.absolute())
    return str(relative) if relative.parent != Path() else f"./{relative}"
