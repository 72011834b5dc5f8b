"""Settings read from the environment, shared by the worker, the callbacks API and the CLI.

Temporal and AWS settings use the names their own tools already read (``TEMPORAL_ADDRESS``,
``AWS_ENDPOINT_URL``, ...), so one environment serves the ``temporal`` CLI, boto3 and us.
Everything of our own is prefixed ``APPROVAL_``. Durations take ISO 8601 (``PT5M``) or seconds
(``300``).
"""

from __future__ import annotations

import re
import sys
from datetime import timedelta
from functools import cached_property
from typing import Annotated, Any, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from common.tokens import SigningKey, TokenSigner


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


_SECONDS = re.compile(r"\s*\d+(\.\d+)?\s*")


def seconds_as_durations(model: type[BaseModel], data: Any) -> Any:
    """``data`` with each plain number given for a duration of ``model`` read as seconds.

    pydantic takes a number as seconds but refuses the same number written as text, and the
    environment holds only text. Nested models (``APPROVAL_PROCESS__HTTP_RETRY__DELAY``) too.
    """
    if not isinstance(data, dict):
        return data
    converted = dict(data)
    for name, field in model.model_fields.items():
        annotation = field.annotation
        for key in (name, field.alias):
            if key is None or key not in converted:
                continue
            value = converted[key]
            if (
                annotation in (timedelta, timedelta | None)
                and isinstance(value, str)
                and _SECONDS.fullmatch(value)
            ):
                converted[key] = float(value)
            elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
                converted[key] = seconds_as_durations(annotation, value)
    return converted


class TextOrJsonEnvSource(EnvSettingsSource):
    """Environment variables; a list or model written as plain text reaches its validator as text.

    pydantic-settings reads a variable for a list or model as JSON and stops with a traceback
    when it is not. Text lets a field say how it is written (``a@x=Alice,b@x`` for approvers);
    one that takes no text fails validation with a message that names the variable.
    """

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            return value


class Settings(BaseSettings):
    """One flat settings object; each service reads the fields it needs."""

    model_config = SettingsConfigDict(
        env_prefix="APPROVAL_",
        env_nested_delimiter="__",
        nested_model_default_partial_update=True,
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    # Temporal connection.
    temporal_address: str = Field("localhost:7233", validation_alias=_env("TEMPORAL_ADDRESS"))
    temporal_namespace: str = Field("default", validation_alias=_env("TEMPORAL_NAMESPACE"))
    temporal_api_key: SecretStr | None = Field(None, validation_alias=_env("TEMPORAL_API_KEY"))
    temporal_tls: bool = Field(False, validation_alias=_env("TEMPORAL_TLS"))
    task_queue: str = "approval-flow"

    # AWS. boto3 reads AWS_ENDPOINT_URL and credentials itself; we read them for logging and
    # to hand the same endpoint to every client explicitly.
    aws_region: str = Field("us-east-1", validation_alias=_env("AWS_DEFAULT_REGION"))
    aws_endpoint_url: str | None = Field(None, validation_alias=_env("AWS_ENDPOINT_URL"))
    process_table: str = "approval-processes"
    idempotency_table: str = "approval-idempotency"
    approval_topic_arn: str = Field(
        "arn:aws:sns:us-east-1:123456789012:approval-requests",
        validation_alias=_env("APPROVAL_TOPIC_ARN"),
    )
    command_queue_url: str = "http://localhost:5000/123456789012/approval-command-one"
    command_url: str = "http://localhost:8082/commands/two"

    # Where approvers and downstream systems reach the callbacks API (used to build links).
    callback_base_url: str = "http://localhost:8080"
    # Newest first, "kid:secret" pairs separated by commas. The first key signs; all verify.
    signing_keys: Annotated[tuple[SigningKey, ...], NoDecode] = Field(default=(), min_length=1)
    # Grace after a wait's deadline during which its link still verifies (clock skew, slow mail).
    token_grace: timedelta = timedelta(minutes=5)

    # Callbacks API.
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    max_callback_bytes: int = 64 * 1024
    # Command heartbeats (POST /callbacks/{token}/heartbeat): the largest body, and how often one
    # link's heartbeats are signalled at most (the ones between are answered, not sent).
    max_heartbeat_bytes: int = Field(4 * 1024, ge=64)
    heartbeat_min_interval: timedelta = timedelta(seconds=5)

    # Observability. The worker's Prometheus endpoint listens on metrics_host:metrics_port.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    log_json: bool = False
    log_level: str = "INFO"

    # Worker memory. Runs kept in memory between their tasks:
    # an evicted run replays its history when its next signal or query arrives.
    worker_max_cached_workflows: int = Field(1000, ge=0)
    # Shared (the default): workflows/ is imported once, not once more for every cached run
    # (half of what a parked process costs). Safe because those modules hold no state a run
    # could change (tests/unit/test_workflow_modules.py); the sandbox then no longer checks the
    # calls they make, so the tests and `approval-flow replay` keep the strict sandbox.
    worker_share_workflow_modules: bool = True

    # Worker Versioning (docs/upgrades.md). Both set: the worker polls as this build of this
    # Worker Deployment and pins each process to the build it started on. Neither: unversioned.
    deployment_name: str | None = None
    build_id: str | None = Field(None, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _seconds(cls, data: Any) -> Any:
        return seconds_as_durations(cls, data)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            TextOrJsonEnvSource(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )

    @field_validator("build_id")
    @classmethod
    def _versioned_together(cls, build_id: str | None, info: ValidationInfo) -> str | None:
        # A build id without a deployment (or the reverse) is no version at all: refuse it
        # rather than start a worker that silently runs unversioned.
        if (build_id is None) != (info.data.get("deployment_name") is None):
            raise ValueError(
                "set APPROVAL_DEPLOYMENT_NAME and APPROVAL_BUILD_ID together, or neither"
            )
        return build_id

    @field_validator("temporal_address")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        # The SDK would refuse it only at connect time, with a traceback; say so at start-up.
        host, _, port = value.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, with a port from 1 to 65535")
        return value.strip()

    @field_validator("signing_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(SigningKey.parse(part) for part in value.split(",") if part.strip())
        return value

    @cached_property
    def signer(self) -> TokenSigner:
        return TokenSigner(self.signing_keys, grace=self.token_grace)


def env_name(model: type[BaseSettings], field: str) -> str:
    """The environment variable a settings field is read from."""
    info = model.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, AliasChoices) and alias.choices:
        return str(alias.choices[0])
    prefix = model.model_config.get("env_prefix", "")
    return f"{prefix}{field}".upper()


def describe_error(err: ValidationError, model: type[BaseSettings] = Settings) -> str:
    """One line naming each bad or missing environment variable and what is wrong with it."""
    problems = []
    for error in err.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        name = env_name(model, field) if field in model.model_fields else field or "settings"
        # A nested field is one variable of its own: APPROVAL_PROCESS__APPROVAL_TIMEOUT.
        name += "".join(f"__{part}".upper() for part in error["loc"][1:] if isinstance(part, str))
        # pydantic prefixes a validator's own words with "Value error, "; they read alone.
        message = (
            "is not set"
            if error["type"] in ("missing", "too_short")
            else error["msg"].removeprefix("Value error, ")
        )
        problems.append(f"{name} {message}")
    return "invalid settings: " + "; ".join(problems)


S = TypeVar("S", bound=BaseSettings)


def load_settings(model: type[S], program: str) -> S:
    """Read ``model`` from the environment, or say in one line what is wrong and exit 2."""
    try:
        return model()
    except ValidationError as err:
        print(f"{program}: {describe_error(err, model)}", file=sys.stderr)
        raise SystemExit(2) from None
