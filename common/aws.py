"""boto3 clients, made once per worker and shared by every activity thread.

boto3 clients are thread-safe; making one is not cheap (it loads service models), so the worker
makes them at startup from one session instead of per activity call.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
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


# How long the DynamoDB call of a table write tried in the worker may take: connect and read, one
# try, well within the try's 2 s (workflows/process.py: LOCAL_WRITE_TRY_TIMEOUT). A try that runs
# out is cut off by the SDK, but a sync activity's thread cannot be interrupted: with the ordinary
# client its call would hold that thread for up to 2 x 13 s after the try's slot was freed, and in
# an outage such threads would fill the worker's pool (worker.py) while writes kept failing.
# 0.25 s + 1.0 s leaves 0.75 s of the try for waiting for a slot and a thread: a try that starts
# later than that does not call at all (activities/process_table.py: ``_client``), so a call
# that starts ends by the try's deadline. A write takes milliseconds (a loopback or in-region
# connect, a one-item write); 1 s without an answer is an outage, which the activity retries.
# Not bounded by these: a DNS lookup and a credential refresh (botocore gives them no timeout);
# the worker's pool has threads to spare for such a call (worker.py).
LOCAL_TRY_CONNECT_SECONDS = 0.25
LOCAL_TRY_READ_SECONDS = 1.0
# The longest a try's call takes, by the two timeouts above.
LOCAL_TRY_CALL = timedelta(seconds=LOCAL_TRY_CONNECT_SECONDS + LOCAL_TRY_READ_SECONDS)


def local_try_config(max_pool_connections: int = 50) -> Config:
    """For a table write tried in the worker: one try, done within the try's time."""
    return Config(
        connect_timeout=LOCAL_TRY_CONNECT_SECONDS,
        read_timeout=LOCAL_TRY_READ_SECONDS,
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=max_pool_connections,
    )


@dataclass(frozen=True)
class AwsClients:
    dynamodb: DynamoDBClient
    sns: SNSClient
    sqs: SQSClient
    # The same table, for the writes tried in the worker (``local_try_config``).
    dynamodb_local_try: DynamoDBClient

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
            dynamodb_local_try=session.client(
                "dynamodb",
                endpoint_url=endpoint,
                config=local_try_config(max_pool_connections),
            ),
        )
