"""How the workflows run under Worker Versioning: processes pinned, the mutex auto-upgrading.

A versioned worker (``APPROVAL_DEPLOYMENT_NAME`` and ``APPROVAL_BUILD_ID`` set) pins every
workflow to the build it started on by default (see ``worker.py``): a process lives for hours,
and pinned it never meets code it did not start with. The mutex never ends, so pinning would
keep its first build alive forever; it moves to each new current build instead, which is why
every change to ``MutexWorkflow`` goes behind ``workflow.patched``.

The behaviour is declared on a subclass registered only by versioned workers, not on
``MutexWorkflow`` itself: a server refuses a workflow task completed with a versioning behaviour
by a worker that has no deployment version.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.common import VersioningBehavior

with workflow.unsafe.imports_passed_through():
    from workflows.messages import MutexInput
    from workflows.mutex import MutexWorkflow


@workflow.defn(name="MutexWorkflow", versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class AutoUpgradeMutexWorkflow(MutexWorkflow):
    """``MutexWorkflow`` unchanged, moving to the current build at its next workflow task."""

    @workflow.run
    async def run(self, input: MutexInput) -> None:
        await super().run(input)
