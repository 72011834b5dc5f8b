"""SNS: the approval mails, with signed approve/reject links.

The links carry only a signed, expiring token and lead to a confirmation page, so a mail scanner
that opens them decides nothing; the decision needs the page's POST.

Without named approvers one mail goes to the topic with the shared link (the original). With
named approvers each gets mails of their own: the request, reminders, an escalation. Their link
is bound to them (the token's subject), and every mail of theirs carries the same link. Each
mail carries the SNS message attribute ``approver`` (their id), which is how a real deployment
routes it: one e-mail subscription per approver with the filter policy
``{"approver": ["alice@example.com"]}``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from temporalio import activity

from activities.idempotency import IdempotencyStore
from common import tracing
from common.tokens import Purpose, TokenSigner
from workflows.messages import (
    ANYONE,
    APPROVAL_CALLBACK,
    Approver,
    NotifyApprovers,
    NotifyResult,
    PublishApprovalRequest,
)

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient

SUBJECT_MAX_CHARS = 100  # SNS refuses longer subjects


def approval_links(base_url: str, token: str) -> tuple[str, str]:
    """The approve and reject links for one token."""
    page = f"{base_url.rstrip('/')}/approvals/{token}"
    return page, f"{page}?decision=reject"


_SUBJECT_PREFIX = {"request": "", "reminder": "Reminder: ", "escalation": "Escalated: "}


def approval_subject(process_id: str, kind: str = "request") -> str:
    """One line of at most 100 characters, as SNS requires."""
    subject = " ".join(f"{_SUBJECT_PREFIX.get(kind, '')}Approval requested: {process_id}".split())
    return subject[:SUBJECT_MAX_CHARS]


def _when(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def approval_body(
    request: PublishApprovalRequest | NotifyApprovers,
    approve_url: str,
    reject_url: str,
    to: Approver | None = None,
) -> str:
    """The mail: who asks, what for, by when, the two links; for a named approver, to whom."""
    description = request.description.strip() or "(no description)"
    kind = request.kind if isinstance(request, NotifyApprovers) else "request"
    opening = {
        "request": f"{request.requested_by} asks for your approval.",
        "reminder": f"Reminder: {request.requested_by} is still waiting for your decision.",
        "escalation": (
            f"{request.requested_by} asks for your approval; the request was escalated to you "
            "because it was not decided in time."
        ),
    }[kind]
    header = [f"To: {to.name} <{to.id}>" if to.name else f"To: {to.id}", ""] if to else []
    standing = (
        [f"Where it stands: {request.summary}"]
        if isinstance(request, NotifyApprovers) and request.summary
        else []
    )
    own = ["This link is yours: it records your decision, once, and nobody else's."] if to else []
    return "\n".join(
        [
            *header,
            opening,
            "",
            description,
            "",
            f"Process: {request.process_id}",
            f"Requested: {_when(request.requested_at)}",
            f"Decide before: {_when(request.deadline)}",
            *standing,
            "",
            f"Approve: {approve_url}",
            f"Reject:  {reject_url}",
            "",
            *own,
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
            request.process_id,
            APPROVAL_CALLBACK,
            Purpose.APPROVAL,
            request.deadline,
            trace_parent=(
                request.link_trace.traceparent
                if request.link_trace is not None
                else tracing.current_traceparent()  # a process from before the workflow chose
            ),
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

    @activity.defn(name="notify_approvers")
    def notify_approvers(self, notice: NotifyApprovers) -> NotifyResult:
        """Mail each recipient their own link; a retry skips the mails already sent.

        One SNS message per approver, so one approver's mail never shows another's link.
        """
        recipients: list[Approver | None] = [*notice.to, *([None] if notice.anyone else [])]
        sent: dict[str, str] = {}
        for approver in recipients:
            approver_id = approver.id if approver else ANYONE
            key = f"{notice.process_id}:approval:{notice.sequence}:{approver_id}"
            done = self._idempotency.get(key)
            if done is not None:
                sent[approver_id] = str(done["message_id"])
                continue
            token = self._signer.sign(
                notice.process_id,
                APPROVAL_CALLBACK,
                Purpose.APPROVAL,
                notice.deadline,
                approver=approver.id if approver else None,
                # The process's trace, the same in every notice, so the link stays the same.
                trace_parent=notice.link_trace.traceparent if notice.link_trace else None,
            )
            approve_url, reject_url = approval_links(self._base_url, token)
            response = self._sns.publish(
                TopicArn=self._topic_arn,
                Subject=approval_subject(notice.process_id, notice.kind),
                Message=approval_body(notice, approve_url, reject_url, to=approver),
                MessageAttributes={
                    "approver": {"DataType": "String", "StringValue": approver_id},
                    "kind": {"DataType": "String", "StringValue": notice.kind},
                },
            )
            sent[approver_id] = response["MessageId"]
            self._idempotency.record(key, {"message_id": sent[approver_id]})
        activity.logger.info(
            "Approval %s for %s mailed to %s", notice.kind, notice.process_id, ", ".join(sent)
        )
        return NotifyResult(message_ids=sent)
