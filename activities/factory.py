"""Every activity the worker registers, wired from settings and the worker's shared clients."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import aiohttp

from activities.commands import CommandActivities
from activities.idempotency import IdempotencyStore
from activities.mutex import check_holder, describe_workflow, recover_mutex, request_lock
from activities.notifications import ApprovalNotifier
from activities.process_table import ProcessTableActivities
from common.aws import AwsClients
from common.settings import Settings


def build_activities(
    settings: Settings,
    clients: AwsClients,
    http: aiohttp.ClientSession,
    executor: Executor,
) -> list[Callable[..., Any]]:
    """``http`` must be made inside the worker's event loop, before this is called.

    ``executor`` is the thread pool the worker gives its sync activities; the async ones run
    their blocking calls on it too, so one sized pool bounds every boto3 call of the worker.
    """
    signer = settings.signer
    idempotency = IdempotencyStore(clients.dynamodb, settings.idempotency_table)
    processes = ProcessTableActivities(
        clients.dynamodb, settings.process_table, clients.dynamodb_local_try
    )
    notifier = ApprovalNotifier(
        clients.sns,
        settings.approval_topic_arn,
        signer,
        settings.callback_base_url,
        idempotency,
    )
    commands = CommandActivities(
        clients.sqs,
        settings.command_queue_url,
        http,
        settings.command_url,
        signer,
        settings.callback_base_url,
        idempotency,
        executor=executor,
    )
    return [
        processes.create_process,
        processes.update_process_status,
        notifier.publish_approval_request,
        notifier.notify_approvers,
        commands.send_command_one,
        commands.send_command_two,
        request_lock,
        check_holder,
        describe_workflow,
        recover_mutex,
    ]
