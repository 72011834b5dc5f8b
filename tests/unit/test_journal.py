"""The journal the local stand-ins keep their state in: compaction is all or nothing."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from common.journal import Journal


def test_a_compaction_that_fails_leaves_the_old_journal_whole_and_appendable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk at the rename: the journal must go on taking entries, and lose none.

    The emulator journals a write and then compacts; before, a failed compaction had closed the
    journal's file already, so every later write failed to be journaled.
    """
    path = tmp_path / "journal.jsonl"
    journal, _ = Journal.open(path)
    journal.append({"n": 1})

    def disk_full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError):
        journal.rewrite([{"compacted": True}])
    monkeypatch.undo()

    journal.append({"n": 2})
    journal.close()
    assert Journal.open(path)[1] == [{"n": 1}, {"n": 2}]
    assert [p.name for p in tmp_path.iterdir()] == ["journal.jsonl"]  # no temporary left


def test_a_compaction_replaces_the_journal_and_appends_go_to_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal, _ = Journal.open(path)
    for n in range(5):
        journal.append({"n": n})

    journal.rewrite([{"n": "all"}])
    journal.append({"n": 5})
    journal.close()

    reopened, entries = Journal.open(path)
    reopened.close()
    assert entries == [{"n": "all"}, {"n": 5}]
    assert journal.entries == 2
