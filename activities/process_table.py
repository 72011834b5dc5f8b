"""DynamoDB process table: one record per process, keyed by the workflow-made process id.

Every write is conditional, so a retried activity converges instead of duplicating a record or
moving a final status backwards.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from common.aws import LOCAL_TRY_CALL
from workflows.messages import (
    CreateProcessRecord,
    ProcessStatus,
    StatusUpdateResult,
    UpdateProcessStatus,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef

# The statuses each target may be reached from; a final status is nobody's predecessor.
ALLOWED_PREDECESSORS: dict[ProcessStatus, tuple[ProcessStatus, ...]] = {
    ProcessStatus.IN_PROGRESS: (ProcessStatus.PENDING,),
    ProcessStatus.COMPLETED: (ProcessStatus.IN_PROGRESS,),
    ProcessStatus.FAILED: (ProcessStatus.PENDING, ProcessStatus.IN_PROGRESS),
}


def iso_utc(moment: datetime) -> str:
    """ISO-8601 in UTC; a naive time is taken as UTC (workflow time always is)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


# The error type of a try in the worker that started too late to write (``_client``): retryable,
# so the workflow writes as an activity (workflows/process.py: ``_table_write``).
LATE_TRY = "LocalWriteTryLate"


class ProcessTableActivities:
    def __init__(
        self,
        dynamodb: DynamoDBClient,
        table_name: str,
        local_try: DynamoDBClient | None = None,
    ) -> None:
        """``local_try`` serves the writes the workflow tries in the worker (local activities):
        a client whose call ends within that try (common/aws.py: ``local_try_config``)."""
        self._ordinary = dynamodb
        self._local_try = local_try or dynamodb
        self._table = table_name

    def _client(self) -> DynamoDBClient:
        """The client for this call; for a try in the worker, only if its call can end in time.

        A try in the worker (a local activity) has ``LOCAL_WRITE_TRY_TIMEOUT`` (workflows/
        process.py) from when the workflow scheduled it; then the workflow gives up on it and
        writes as an activity. But sdk-core still starts a try that waited past that for a
        local-activity slot (the SDK one that waited for a pool thread), and does not tell it
        (``activity.is_cancelled()`` stays False): in an outage every queued try would write on
        top of the activities that replace them, its thread outliving its slot, so the slots
        would bound nothing. The time it was scheduled is reliable: a try whose DynamoDB call
        (``LOCAL_TRY_CALL`` at worst, common/aws.py) could not end by its deadline fails here,
        before touching the table, with an error a retry can fix, so the workflow goes on as
        after a timeout.
        """
        info = activity.info()
        if not info.is_local:
            return self._ordinary
        # The workflow gives a try its time from scheduling (``schedule_to_close_timeout``); a
        # local activity has one of the two timeouts.
        budget = info.schedule_to_close_timeout or info.start_to_close_timeout or timedelta.max
        waited = datetime.now(UTC) - info.current_attempt_scheduled_time
        if waited + LOCAL_TRY_CALL > budget:
            activity.logger.warning(
                "%s started in the worker %.2f s after it was scheduled, too late to write "
                "within its %.2f s: not writing; the workflow writes it as an activity",
                info.activity_type,
                waited.total_seconds(),
                budget.total_seconds(),
            )
            raise ApplicationError(
                f"{info.activity_type} started {waited.total_seconds():.2f} s after it was "
                f"scheduled, too late to write within its {budget.total_seconds():.2f} s",
                type=LATE_TRY,
                # The SDK logs a benign failure at DEBUG, without a traceback: the warning above
                # is the one line an operator sees.
                category=ApplicationErrorCategory.BENIGN,
            )
        return self._local_try

    @activity.defn(name="create_process")
    def create_process(self, record: CreateProcessRecord) -> None:
        """Put the pending record once; a retry after a successful put leaves it untouched."""
        dynamodb = self._client()
        created_at = iso_utc(record.created_at)
        item: dict[str, AttributeValueTypeDef] = {
            "process_id": {"S": record.process_id},
            "status": {"S": ProcessStatus.PENDING.value},
            "requested_by": {"S": record.requested_by},
            "description": {"S": record.description},
            "created_at": {"S": created_at},
            "updated_at": {"S": created_at},
        }
        if record.redriven_from is not None:
            # A redrive is a process of its own that says where it came from.
            item["redriven_from"] = {"S": record.redriven_from}
            item["redrive_count"] = {"N": str(record.redrive_count)}
        try:
            dynamodb.put_item(
                TableName=self._table,
                Item=item,
                ConditionExpression="attribute_not_exists(process_id)",
            )
        except dynamodb.exceptions.ConditionalCheckFailedException:
            activity.logger.info("Process record %s already exists", record.process_id)

    @activity.defn(name="update_process_status")
    def update_process_status(self, update: UpdateProcessStatus) -> StatusUpdateResult:
        """Move the record forward; a final status stays as it is."""
        dynamodb = self._client()
        predecessors = ALLOWED_PREDECESSORS.get(update.status)
        if predecessors is None:
            raise ApplicationError(
                f"no process may move to {update.status.value!r}",
                type="InvalidTransition",
                non_retryable=True,
            )
        at = iso_utc(update.at)
        names = {"#status": "status", "#updated_at": "updated_at"}
        values: dict[str, AttributeValueTypeDef] = {
            ":status": {"S": update.status.value},
            ":at": {"S": at},
        }
        assignments = ["#status = :status", "#updated_at = :at"]
        extra = {
            "reason": update.reason.value if update.reason else None,
            "message": update.message,
            "approved_by": update.approved_by,
            "finished_at": at if update.status.is_final else None,
        }
        for name, value in extra.items():
            if value is not None:
                names[f"#{name}"] = name
                values[f":{name}"] = {"S": value}
                assignments.append(f"#{name} = :{name}")
        allowed = []
        for index, status in enumerate(predecessors):
            values[f":from{index}"] = {"S": status.value}
            allowed.append(f":from{index}")
        try:
            dynamodb.update_item(
                TableName=self._table,
                Key={"process_id": {"S": update.process_id}},
                UpdateExpression="SET " + ", ".join(assignments),
                ConditionExpression=(
                    f"attribute_exists(process_id) AND #status IN ({', '.join(allowed)})"
                ),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                # On a failed condition DynamoDB returns the record as the condition saw it, in
                # the same call: no second read that could see another state.
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except dynamodb.exceptions.ConditionalCheckFailedException as err:
            old = err.response.get("Item")
            seen: dict[str, Any] | None = old if isinstance(old, dict) and old else None
        else:
            return StatusUpdateResult(applied=True, status=update.status)
        # Explained outside the ``except``: an error raised there would carry the boto error as
        # its cause, and the workflow reports the innermost cause, which is no explanation.
        return self._refused(update, seen)

    def _refused(
        self, update: UpdateProcessStatus, item: dict[str, Any] | None
    ) -> StatusUpdateResult:
        """Explain a failed condition: no record, an earlier attempt of this update, a final state.

        No old record (ALL_OLD empty) means the condition failed on ``attribute_exists``.
        """
        if item is None:
            raise ApplicationError(
                f"process record {update.process_id} does not exist",
                type="ProcessNotFound",
                non_retryable=True,
            ) from None
        current = ProcessStatus(item["status"]["S"])
        stored_reason = item.get("reason", {}).get("S")
        wanted_reason = update.reason.value if update.reason else None
        # Same status (and, for a final one, same reason): an earlier attempt of this very update.
        if current == update.status and (not current.is_final or stored_reason == wanted_reason):
            return StatusUpdateResult(applied=True, status=current)
        if current.is_final:
            activity.logger.info(
                "Process %s is already %s; not moving it to %s",
                update.process_id,
                current.value,
                update.status.value,
            )
            return StatusUpdateResult(applied=False, status=current)
        raise ApplicationError(
            f"process {update.process_id} cannot move from {current.value!r} "
            f"to {update.status.value!r}",
            type="InvalidTransition",
            non_retryable=True,
        )
