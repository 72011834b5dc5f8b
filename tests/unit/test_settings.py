"""Settings from the environment: names, nested process options, one-line errors."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from cli.settings import CliSettings
from common.settings import Settings, describe_error, env_name
from starter import StarterSettings
from workflows.messages import ProcessOptions

KEY = "k1:" + "s" * 40


def test_process_options_default_to_the_original(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPROVAL_SIGNING_KEYS", KEY)
    assert StarterSettings().process == ProcessOptions()
    assert ProcessOptions().approval_timeout == timedelta(hours=1)
    assert ProcessOptions().lock_timeout == timedelta(minutes=100)


def test_process_options_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPROVAL_SIGNING_KEYS", KEY)
    monkeypatch.setenv("APPROVAL_PROCESS__APPROVAL_TIMEOUT", "PT2H")
    monkeypatch.setenv("APPROVAL_PROCESS__HTTP_RETRY__MAX_ATTEMPTS", "7")
    monkeypatch.setenv("APPROVAL_PROCESS__COMPLETION__TOLERATED_FAILURE_COUNT", "1")
    settings = StarterSettings()
    assert settings.process.approval_timeout == timedelta(hours=2)
    assert settings.process.http_retry.max_attempts == 7
    assert settings.process.http_retry.delay == timedelta(minutes=5)  # the rest keep defaults
    assert settings.process.completion.tolerated_failure_count == 1
    # The CLI, which starts processes, reads the same variables.
    assert CliSettings().process.approval_timeout == timedelta(hours=2)


def test_a_bad_setting_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPROVAL_SIGNING_KEYS", raising=False)
    with pytest.raises(ValidationError) as err:
        Settings()
    assert describe_error(err.value) == "invalid settings: APPROVAL_SIGNING_KEYS is not set"


def test_env_names_follow_the_tools_that_share_them() -> None:
    assert env_name(Settings, "temporal_address") == "TEMPORAL_ADDRESS"
    assert env_name(Settings, "aws_endpoint_url") == "AWS_ENDPOINT_URL"
    assert env_name(Settings, "approval_topic_arn") == "APPROVAL_TOPIC_ARN"
    assert env_name(Settings, "task_queue") == "APPROVAL_TASK_QUEUE"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7200", timedelta(hours=2)),
        ("90.5", timedelta(seconds=90.5)),
        ("PT2H", timedelta(hours=2)),
        ("P1DT30M", timedelta(days=1, minutes=30)),
    ],
)
def test_durations_take_seconds_or_iso_8601(
    monkeypatch: pytest.MonkeyPatch, text: str, expected: timedelta
) -> None:
    monkeypatch.setenv("APPROVAL_SIGNING_KEYS", KEY)
    monkeypatch.setenv("APPROVAL_TOKEN_GRACE", text)
    monkeypatch.setenv("APPROVAL_PROCESS__APPROVAL_TIMEOUT", text)
    monkeypatch.setenv("APPROVAL_PROCESS__HTTP_RETRY__DELAY", text)
    # The worker and the API read the first; starters (the CLI, make run's demo) all three.
    assert Settings().token_grace == expected
    settings = CliSettings()
    assert settings.token_grace == expected
    assert settings.process.approval_timeout == expected
    assert settings.process.http_retry.delay == expected


def test_a_bad_nested_setting_names_its_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPROVAL_PROCESS__APPROVAL_TIMEOUT", "soon")
    with pytest.raises(ValidationError) as err:
        CliSettings()
    assert describe_error(err.value, CliSettings).startswith(
        "invalid settings: APPROVAL_PROCESS__APPROVAL_TIMEOUT Input should be a valid timedelta"
    )


@pytest.mark.parametrize("address", ["localhost:7233", "[::1]:7233", "temporal.example.com:443"])
def test_a_temporal_address_is_host_and_port(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", address)
    assert Settings(signing_keys=KEY).temporal_address == address


@pytest.mark.parametrize("address", ["localhost:99999", "localhost:0", "localhost", ":7233", "h:x"])
def test_a_malformed_temporal_address_is_one_line(
    monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", address)
    with pytest.raises(ValidationError) as err:
        Settings(signing_keys=KEY)
    assert describe_error(err.value) == (
        "invalid settings: TEMPORAL_ADDRESS must be host:port, with a port from 1 to 65535"
    )
