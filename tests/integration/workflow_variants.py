"""Test-only next versions of the workflows: one change guarded by ``workflow.patched``, one not.

The change is the same in each: the workflow writes a memo (a new command in its history). Guarded,
old histories still replay and only new runs take the new branch; unguarded, an old history no
longer replays. ``patched`` is decided once per run: a run that began on the old code keeps the
old branch to its end (for the never-ending mutex: until its next continue-as-new).
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.common import VersioningBehavior

from workflows.messages import MutexInput, ProcessInput, ProcessResult
from workflows.mutex import MutexWorkflow
from workflows.process import ProcessWorkflow

PATCH = "memo-of-the-code-version"
NEW_CODE = {"code": "v2"}


@workflow.defn(name="ProcessWorkflow")
class PatchedProcessWorkflow(ProcessWorkflow):
    @workflow.run
    async def run(self, input: ProcessInput) -> ProcessResult:
        if workflow.patched(PATCH):
            workflow.upsert_memo(NEW_CODE)
        return await super().run(input)


@workflow.defn(name="ProcessWorkflow")
class UnpatchedProcessWorkflow(ProcessWorkflow):
    """The same change without the guard: incompatible with every history already recorded."""

    @workflow.run
    async def run(self, input: ProcessInput) -> ProcessResult:
        workflow.upsert_memo(NEW_CODE)
        return await super().run(input)


@workflow.defn(name="MutexWorkflow", versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class PatchedMutexWorkflow(MutexWorkflow):
    """The auto-upgrading mutex of the next build: each grant of a new run is noted in its memo."""

    @workflow.run
    async def run(self, input: MutexInput) -> None:
        await super().run(input)

    async def _grant_next(self) -> None:
        await super()._grant_next()
        if workflow.patched(PATCH):
            grants = self._counters["grants"] + self._counters["failed_grants"]
            workflow.upsert_memo({**NEW_CODE, "grants_so_far": grants})
