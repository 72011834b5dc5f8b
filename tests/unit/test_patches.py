"""ProcessWorkflow's ``_since`` answers only the patches ``process-local-writes`` stands for.

A newer patch asked through it would be answered True for every process started under
``process-local-writes``, and take its new branch while replaying their histories.
"""

from __future__ import annotations

import pytest

from workflows.asking import APPROVAL_LINKS_TRACED_PATCH, APPROVAL_POLICY_PATCH
from workflows.process import (
    COMMAND_HEARTBEATS_PATCH,
    LOCAL_WRITES_PATCH,
    LOCK_GUARDS_SENDS_PATCH,
    REDRIVE_PATCH,
    SUBSUMED_BY_LOCAL_WRITES,
    runs_patch,
)


def test_a_patch_newer_than_local_writes_is_refused() -> None:
    with pytest.raises(ValueError, match=r"workflow\.patched"):
        runs_patch("next-change", local_writes=True)
    with pytest.raises(ValueError, match=r"workflow\.patched"):
        runs_patch(LOCAL_WRITES_PATCH, local_writes=True)


def test_an_older_process_is_refused_an_unknown_patch_too() -> None:
    # The check comes before workflow.patched: the same code answers for both kinds of process.
    with pytest.raises(ValueError):
        runs_patch("next-change", local_writes=False)


@pytest.mark.parametrize(
    "patch",
    [
        LOCK_GUARDS_SENDS_PATCH,
        APPROVAL_POLICY_PATCH,
        APPROVAL_LINKS_TRACED_PATCH,
        REDRIVE_PATCH,
        COMMAND_HEARTBEATS_PATCH,
    ],
)
def test_the_five_subsumed_patches_run_under_local_writes(patch: str) -> None:
    assert patch in SUBSUMED_BY_LOCAL_WRITES
    assert runs_patch(patch, local_writes=True)


def test_exactly_five_patches_are_subsumed() -> None:
    assert len(SUBSUMED_BY_LOCAL_WRITES) == 5
