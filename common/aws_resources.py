"""Create the AWS resources the project needs, idempotently: for emulators and fresh accounts.

Run ``python -m common.aws_resources`` with the usual environment (``AWS_ENDPOINT_URL``, table
names, ...) to make the process table, the idempotency table (with its TTL), the SNS topic and
the SQS queue; existing ones are left as they are.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from common.settings import Settings
from common.tokens import SigningKey

if TYPE_CHECKING:
    from mypy_boto3_sqs.literals import QueueAttributeNameType

    from common.aws import AwsClients

IDEMPOTENCY_TTL_ATTRIBUTE = "expires_at"


@dataclass(frozen=True)
class ProvisionedResources:
    topic_arn: str
    queue_url: str
    # Names of what this run made; empty when everything already existed.
    created: tuple[str, ...] = field(default=())


def topic_name(topic_arn: str) -> str:
    return topic_arn.rsplit(":", 1)[-1]


def queue_name(queue_url: str) -> str:
    return urlparse(queue_url).path.rstrip("/").rsplit("/", 1)[-1]


def ensure_resources(settings: Settings, clients: AwsClients) -> ProvisionedResources:
    """Make whatever is missing and wait until both tables are ACTIVE."""
    created: list[str] = []
    if _ensure_table(clients, settings.process_table, "process_id"):
        created.append(f"table {settings.process_table}")
    if _ensure_table(clients, settings.idempotency_table, "key"):
        created.append(f"table {settings.idempotency_table}")
    waiter = clients.dynamodb.get_waiter("table_exists")
    for table in (settings.process_table, settings.idempotency_table):
        waiter.wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    if _ensure_ttl(clients, settings.idempotency_table):
        created.append(f"ttl {settings.idempotency_table}.{IDEMPOTENCY_TTL_ATTRIBUTE}")

    # Both calls are idempotent in AWS: an existing topic or queue is returned as it is.
    topic_arn = clients.sns.create_topic(Name=topic_name(settings.approval_topic_arn))["TopicArn"]
    name = queue_name(settings.command_queue_url)
    attributes: dict[QueueAttributeNameType, str] = {}
    if name.endswith(".fifo"):
        attributes["FifoQueue"] = "true"
    queue_url = clients.sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    return ProvisionedResources(topic_arn=topic_arn, queue_url=queue_url, created=tuple(created))


def _ensure_table(clients: AwsClients, table: str, partition_key: str) -> bool:
    try:
        clients.dynamodb.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": partition_key, "AttributeType": "S"}],
            KeySchema=[{"AttributeName": partition_key, "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
    except clients.dynamodb.exceptions.ResourceInUseException:
        return False
    return True


def _ensure_ttl(clients: AwsClients, table: str) -> bool:
    # AWS refuses to enable a TTL that is already on, so look first.
    description = clients.dynamodb.describe_time_to_live(TableName=table)
    status = description.get("TimeToLiveDescription", {}).get("TimeToLiveStatus")
    if status in ("ENABLED", "ENABLING"):
        return False
    clients.dynamodb.update_time_to_live(
        TableName=table,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": IDEMPOTENCY_TTL_ATTRIBUTE},
    )
    return True


def main() -> int:
    from botocore.exceptions import BotoCoreError, ClientError
    from pydantic import ValidationError

    from common.aws import AwsClients

    # Provisioning signs nothing, so it must not need (or see) the signing keys.
    placeholder = (SigningKey(kid="unused", secret="-" * SigningKey.MIN_SECRET_BYTES),)
    try:
        settings = Settings(signing_keys=placeholder)
        resources = ensure_resources(settings, AwsClients.from_settings(settings))
    except (ValidationError, BotoCoreError, ClientError) as err:
        reason = " ".join(str(err).split())
        print(f"aws_resources: cannot provision: {reason}", file=sys.stderr)
        return 1
    for item in resources.created:
        print(f"created {item}")
    print(f"topic {resources.topic_arn}")
    print(f"queue {resources.queue_url}")
    if resources.topic_arn != settings.approval_topic_arn:
        print(
            f"warning: APPROVAL_TOPIC_ARN is {settings.approval_topic_arn}, "
            f"the topic is {resources.topic_arn}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
