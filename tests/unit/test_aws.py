"""The botocore limits fit the Temporal timeouts they serve."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from botocore.config import Config

from common.aws import LOCAL_TRY_CALL, client_config, local_try_config
from workflows.messages import ProcessOptions
from workflows.process import LOCAL_WRITE_TRY_TIMEOUT


def _option(config: Config, name: str) -> Any:
    return getattr(config, name)  # set at run time; the stubs do not declare them


def _longest_call(config: Config) -> timedelta:
    """Every try of the call connecting and reading for as long as botocore lets it."""
    tries = _option(config, "retries")["total_max_attempts"]
    per_try = _option(config, "connect_timeout") + _option(config, "read_timeout")
    return timedelta(seconds=tries * per_try)


def test_a_try_in_the_worker_ends_its_call_within_the_try() -> None:
    """Else the try's thread outlives it (the SDK cannot stop a sync activity's thread)."""
    config = local_try_config()
    assert _option(config, "retries")["total_max_attempts"] == 1
    assert _longest_call(config) == LOCAL_TRY_CALL  # what a try checks before it calls
    # With room to wait for a slot and a thread: a try that waited longer does not call.
    assert LOCAL_TRY_CALL + timedelta(milliseconds=500) <= LOCAL_WRITE_TRY_TIMEOUT


def test_an_activity_ends_its_call_within_its_attempt() -> None:
    assert _longest_call(client_config()) <= ProcessOptions().activity_attempt_timeout
