"""Settings of the stand-ins for the world outside: the downstream systems and the approvers' inbox.

They read the same ``AWS_*`` and ``APPROVAL_*`` variables as the worker where they talk about
the same thing (the command queue, the approval topic), so one environment wires them together;
everything of their own is prefixed ``SIMULATOR_`` or ``INBOX_``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class _AwsSettings(BaseSettings):
    aws_region: str = Field("us-east-1", validation_alias=_env("AWS_DEFAULT_REGION"))
    aws_endpoint_url: str | None = Field(None, validation_alias=_env("AWS_ENDPOINT_URL"))
    log_json: bool = Field(False, validation_alias=_env("APPROVAL_LOG_JSON"))
    log_level: str = Field("INFO", validation_alias=_env("APPROVAL_LOG_LEVEL"))


class SimulatorSettings(_AwsSettings):
    """The downstream systems: command one from SQS, command two over HTTP, both call back."""

    model_config = SettingsConfigDict(env_prefix="SIMULATOR_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = 8082
    # The path command two is POSTed to (the path of APPROVAL_COMMAND_URL).
    command_path: str = "/commands/two"
    queue_url: str = Field(
        "http://localhost:5000/123456789012/approval-command-one",
        validation_alias=_env("SIMULATOR_QUEUE_URL", "APPROVAL_COMMAND_QUEUE_URL"),
    )
    # Seconds between receiving a command and calling back: uniform in [min_delay, max_delay].
    min_delay: float = Field(2.0, ge=0)
    max_delay: float = Field(5.0, ge=0)
    # The same per command, where one should be slower or quicker than the rest: JSON, e.g.
    # {"command-two": [4, 5]}. With SIMULATOR_FAIL_ONCE=command-two, a slow command two fails
    # only after command one is done, so a redrive has exactly one command to send again.
    command_delays: dict[str, tuple[float, float]] = {}
    # Probability that a command fails (its callback says "failed"); 0 never, 1 always.
    failure_rate: float = Field(0.0, ge=0, le=1)
    # Commands (e.g. "command-two") whose first run per idempotency key fails; run again by a
    # redrive, they succeed: a flaky downstream system, to try `approval-flow redrive` on.
    fail_once: Annotated[frozenset[str], NoDecode] = frozenset()
    # Seconds between heartbeats while a command is worked on (POST <callback_url>/heartbeat
    # with the progress); unset: no heartbeats.
    heartbeat_interval: float | None = Field(None, gt=0)
    # Callback POSTs are retried on connection errors and 5xx, at most this many tries in all,
    # the pause doubling from callback_backoff up to callback_max_backoff: about 2 minutes with
    # the defaults, enough to outlast a restart of the callbacks API.
    callback_attempts: int = Field(10, ge=1)
    callback_backoff: float = Field(0.5, ge=0)
    callback_max_backoff: float = Field(30.0, ge=0)
    callback_timeout: float = Field(10.0, gt=0)
    # The journal of the work taken and the leases seen (simulator/work.py); when set, work
    # survives a restart and resumes.
    state_path: Path | None = None
    # Seed for the delays and failures, for a repeatable run.
    seed: int | None = None

    @field_validator("fail_once", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        if isinstance(value, str):  # "command-one,command-two"
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _delays_ordered(self) -> SimulatorSettings:
        if self.max_delay < self.min_delay:
            raise ValueError("SIMULATOR_MAX_DELAY is below SIMULATOR_MIN_DELAY")
        for command, (low, high) in self.command_delays.items():
            if not 0 <= low <= high:
                raise ValueError(
                    f"SIMULATOR_COMMAND_DELAYS: {command}'s delays must be [min, max] "
                    f"with 0 <= min <= max, not [{low}, {high}]"
                )
        return self

    def delays(self, command: str) -> tuple[float, float]:
        """The range ``command``'s delay is drawn from: its own, else the common one."""
        return self.command_delays.get(command, (self.min_delay, self.max_delay))


class InboxSettings(_AwsSettings):
    """The approvers' mailbox: an SQS queue subscribed to the approval topic, shown on a page."""

    model_config = SettingsConfigDict(env_prefix="INBOX_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = 8025
    topic_arn: str = Field(
        "arn:aws:sns:us-east-1:123456789012:approval-requests",
        validation_alias=_env("INBOX_TOPIC_ARN", "APPROVAL_TOPIC_ARN"),
    )
    queue_name: str = "approval-inbox"
    # Messages received, one JSON line each; the page survives a restart when set.
    store_path: Path | None = None
    # Print each message (links included) on standard output as it arrives.
    echo: bool = True
    max_messages: int = Field(500, ge=1)
