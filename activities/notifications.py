"""SNS: the approval request mail, with signed approve/reject links.

The links carry only a signed, expiring token and lead to a confirmation page, so a mail scanner
that opens them decides nothing; the decision needs the page's POST.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from temporalio import activity

from activities.idempotency import IdempotencyStore
from common.tokens import Purpose, TokenSigner
from workflows.messages import APPROVAL_CALLBACK, PublishApprovalRequest

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient

SUBJECT_MAX_CHARS = 100  # SNS refuses longer subjects


def approval_links(base_url: str, token: str) -> tuple[str, str]:
    """The approve and reject links for one token."""
    page = f"{base_url.rstrip('/')}/approvals/{token}"
    return page, f"{page}?decision=reject"


def approval_subject(process_id: str) -> str:
    """One line of at most 100 characters, as SNS requires."""
    subject = " ".join(f"Approval requested: {process_id}".split())
    return subject[:SUBJECT_MAX_CHARS]


def _when(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def approval_body(request: PublishApprovalRequest, approve_url: str, reject_url: str) -> str:
    description = request.description.strip() or "(no description)"
    return "\n".join(
        [
            f"{request.requested_by} asks for your approval.",
            "",
            description,
            "",
            f"Process: {request.process_id}",
            f"Requested: {_when(request.requested_at)}",
            f"Decide before: {_when(request.deadline)}",
            "",
            f"Approve: {approve_url}",
            f"Reject:  {reject_url}",
            "",
            "Each link opens a confirmation page; nothing is decided until you confirm there.",
            "The links stop working after the deadline.",
        ]
    )


class ApprovalNotifier:
    def __init__(
        self,
        sns: SNSClient,
        topic_arn: str,
        signer: TokenSigner,
        callback_base_url: str,
        idempotency: IdempotencyStore,
    ) -> None:
        self._sns = sns
        self._topic_arn = topic_arn
        self._signer = signer
        self._base_url = callback_base_url
        self._idempotency = idempotency

    @activity.defn(name="publish_approval_request")
    def publish_approval_request(self, request: PublishApprovalRequest) -> str:
        """Publish the approval mail once; a retry after success returns the first message id."""
        key = f"{request.process_id}:approval"
        done = self._idempotency.get(key)
        if done is not None:
            activity.logger.info("Approval request for %s already sent", request.process_id)
            return str(done["message_id"])
        token = self._signer.sign(
            request.process_id, APPROVAL_CALLBACK, Purpose.APPROVAL, request.deadline
        )
        approve_url, reject_url = approval_links(self._base_url, token)
        response = self._sns.publish(
            TopicArn=self._topic_arn,
            Subject=approval_subject(request.process_id),
            Message=approval_body(request, approve_url, reject_url),
        )
        message_id = response["MessageId"]
        self._idempotency.record(key, {"message_id": message_id})
        return message_id
