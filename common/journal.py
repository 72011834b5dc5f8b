"""An append-only journal of JSON lines: each entry is on disk before ``append`` returns.

The local stand-ins for the outside world (the downstream simulator, the AWS emulator) keep their
state in memory and write every change here first, so a kill -9 loses nothing they acknowledged:
at start they replay the journal. ``rewrite`` compacts it into the few entries that rebuild the
same state, atomically (a new file renamed over the old one), so it does not grow without bound.

Not thread-safe: callers that append from several threads hold their own lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, NoReturn

log = logging.getLogger("journal")

Entry = dict[str, Any]

# The exit status of a process that could not journal a change (EX_IOERR of sysexits.h).
EXIT_JOURNAL_FAILED = 74


class Journal:
    """``Journal.open(path)`` gives the journal and the entries already in it."""

    def __init__(self, path: Path, file: IO[bytes], entries: int) -> None:
        self.path = path
        self._file = file
        # Entries in the file; callers compare it with what they hold to decide to compact.
        self.entries = entries

    @classmethod
    def open(cls, path: Path) -> tuple[Journal, list[Entry]]:
        """Read every whole entry and open the file for appending.

        A kill during a write can leave a last line cut short. It was never acknowledged (the
        writer had not returned), so it is dropped, and cut off the file so that the next entry
        starts on a line of its own.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        entries: list[Entry] = []
        good_bytes = 0
        if path.exists():
            raw = path.read_bytes()
            offset = 0
            for line in raw.splitlines(keepends=True):
                offset += len(line)
                if not line.endswith(b"\n"):
                    log.warning("%s: dropping a cut-off last entry (%d bytes)", path, len(line))
                    break
                try:
                    entry = json.loads(line)
                except ValueError:
                    log.warning("%s: dropping an unreadable entry at byte %d", path, offset)
                    good_bytes = offset
                    continue
                if isinstance(entry, dict):
                    entries.append(entry)
                good_bytes = offset
            if good_bytes < len(raw):
                with path.open("r+b") as damaged:
                    damaged.truncate(good_bytes)
                    os.fsync(damaged.fileno())
        journal = cls(path, path.open("ab"), len(entries))
        _fsync_directory(path.parent)
        return journal, entries

    def append(self, entry: Entry) -> None:
        """Write one entry and wait until the disk has it."""
        self._file.write(_line(entry))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.entries += 1

    def rewrite(self, entries: Iterable[Entry]) -> None:
        """Replace the whole journal with ``entries``: all of the new one, or all of the old.

        If it raises (a full disk), the old journal is still in place and still appended to.
        """
        temporary = self.path.with_name(self.path.name + ".compacting")
        count = 0
        try:
            with temporary.open("wb") as file:
                for entry in entries:
                    file.write(_line(entry))
                    count += 1
                file.flush()
                os.fsync(file.fileno())
            # Opened before the rename, so a failure leaves the old file and handle as they were;
            # after it, this handle appends to the file now at ``path``.
            rewritten = temporary.open("ab")
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        try:
            os.replace(temporary, self.path)
        except BaseException:
            rewritten.close()
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        self._file.close()
        self._file = rewritten
        _fsync_directory(self.path.parent)
        self.entries = count

    def close(self) -> None:
        self._file.close()


def fail_stop(path: Path, err: OSError) -> NoReturn:
    """Exit at once, answering nobody: a change was made in memory and could not be journaled.

    For a writer that applies a change before journaling it (the AWS emulator: moto decides
    whether a write succeeds). Answering an error while carrying on would leave readers seeing a
    change that the next start, rebuilding from the journal, no longer has. Exiting keeps the
    two equal: the change was never acknowledged, the client hears no answer (so it may or may
    not have landed, and retries), and whoever restarts the process gets exactly the journal.
    Nor is a second try at the write safe: after a failed fsync the kernel may already have
    dropped the unwritten pages and reports the next fsync clean (PostgreSQL's "fsyncgate"),
    which is why databases stop there too.
    """
    log.critical(
        "%s: cannot journal a change already made (%s); exiting with %d so that a restart "
        "rebuilds the state from the journal",
        path,
        err,
        EXIT_JOURNAL_FAILED,
    )
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(EXIT_JOURNAL_FAILED)


def _line(entry: Entry) -> bytes:
    return (json.dumps(entry, separators=(",", ":")) + "\n").encode()


def _fsync_directory(directory: Path) -> None:
    """Make a file's creation or rename durable too (its directory entry)."""
    with contextlib.suppress(OSError):  # not every platform opens directories
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
