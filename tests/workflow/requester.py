"""``Requester``: a stand-in for the processes that ask a mutex for its lock, many at a time.

Lock requests name it as their requester (``requester_workflow_id``); it takes every grant, gives
it back at once unless it was told to keep that request, and remembers the order of its grants.
A test sends the requests itself, so it controls when each reaches the mutex.
"""

from __future__ import annotations

from temporalio import workflow

from workflows.messages import LOCK_RELEASE_SIGNAL, LockGranted, LockRelease, mutex_workflow_id


@workflow.defn(sandboxed=False)
class Requester:
    @workflow.init
    def __init__(self, keep: str) -> None:
        self._keep = keep  # the request id whose grant it keeps until ``let_go``
        self._grants: list[str] = []
        self._kept: LockGranted | None = None

    @workflow.run
    async def run(self, keep: str) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.signal
    async def lock_granted(self, grant: LockGranted) -> None:
        self._grants.append(grant.request_id)
        if grant.request_id == self._keep:
            self._kept = grant
            return
        await self._release(grant)

    @workflow.signal
    async def let_go(self) -> None:
        """Release the kept grant."""
        await workflow.wait_condition(lambda: self._kept is not None)
        assert self._kept is not None
        await self._release(self._kept)

    @workflow.query
    def grants(self) -> list[str]:
        return list(self._grants)

    async def _release(self, grant: LockGranted) -> None:
        await workflow.get_external_workflow_handle(mutex_workflow_id(grant.resource)).signal(
            LOCK_RELEASE_SIGNAL, LockRelease(request_id=grant.request_id, lease_id=grant.lease_id)
        )
