"""boto3 clients, made once per worker and shared by every activity thread.

boto3 clients are thread-safe; making one is not cheap (it loads service models), so the worker
makes them at startup from one session instead of per activity call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from common.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient


def client_config(max_pool_connections: int = 50) -> Config:
    """Short timeouts and one quick retry per call; the long, linear retries belong to Temporal.

    Two tries in botocore's standard mode absorb a throttle or a dropped keep-alive connection
    without spending a whole Temporal attempt (and its minutes of linear delay) on it, while
    2 x (3 s connect + 10 s read) still fits inside the 30 s activity attempt timeout, so a stuck
    call fails as an ordinary retryable error rather than as an activity timeout. The pool is
    sized for the worker's activity thread pool, so threads do not queue for a connection.
    """
    return Config(
        connect_timeout=3,
        read_timeout=10,
        retries={"mode": "standard", "total_max_attempts": 2},
        max_pool_connections=max_pool_connections,
    )


@dataclass(frozen=True)
class AwsClients:
    dynamodb: DynamoDBClient
    sns: SNSClient
    sqs: SQSClient

    @classmethod
    def from_settings(cls, settings: Settings, max_pool_connections: int = 50) -> AwsClients:
        """Clients for the settings' region and endpoint (an emulator when one is set).

        Credentials come from boto3's usual chain (environment, profile, instance role).
        """
        session = boto3.session.Session(region_name=settings.aws_region)
        config = client_config(max_pool_connections)
        endpoint = settings.aws_endpoint_url
        return cls(
            dynamodb=session.client("dynamodb", endpoint_url=endpoint, config=config),
            sns=session.client("sns", endpoint_url=endpoint, config=config),
            sqs=session.client("sqs", endpoint_url=endpoint, config=config),
        )
