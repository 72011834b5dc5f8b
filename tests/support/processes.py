"""Processes as an outsider sees them in ``/proc`` (Linux): which are alive, whose children."""

from __future__ import annotations

from pathlib import Path


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs; a zombie has exited (its parent, or init, reaps it later)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


def stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped by a signal (SIGSTOP: ``State: T`` in ``/proc``)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tT" in status


def children(pid: int) -> set[int]:
    """The running children of ``pid``, whichever of its threads started them."""
    found: set[int] = set()
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.update(int(child) for child in listing.read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
    return {child for child in found if alive(child)}


def command_line(pid: int) -> list[str]:
    """``pid``'s argv; empty once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
