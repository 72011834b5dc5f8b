"""One way to connect to Temporal, shared by the worker, the callbacks API and the CLI."""

from __future__ import annotations

import contextlib
import os
import sys

from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from common.payloads import DATA_CONVERTER
from common.settings import Settings
from common.tracing import Tracing
from common.tracing import installed as installed_tracing
from common.tracing import shutdown as shutdown_tracing


class TemporalUnavailable(Exception):
    """Temporal could not be reached; the message says where and why, in one line."""


class TemporalAddressInvalid(TemporalUnavailable):
    """The SDK refused the address itself: a setting to fix, not a server to wait for."""


def metrics_runtime(host: str, port: int) -> Runtime:
    """A runtime exporting the SDK's own metrics for Prometheus on ``host:port``."""
    return Runtime(
        telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"{host}:{port}"))
    )


async def connect(
    settings: Settings,
    runtime: Runtime | None = None,
    lazy: bool = False,
    tracing: Tracing | None = None,
) -> Client:
    """Connect with the pydantic data converter (every message here is a pydantic model; see
    common/payloads.py).

    ``lazy`` defers the connection to the first call, for services that must start (and
    answer health checks) while Temporal is still down. ``tracing`` defaults to what the
    program configured (``common.tracing.configure``); a worker inherits it from its client.
    """
    if tracing is None:
        tracing = installed_tracing()
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=DATA_CONVERTER,
            api_key=api_key,
            tls=settings.temporal_tls or bool(api_key),
            runtime=runtime,
            lazy=lazy,
            interceptors=tracing.client_interceptors(),
        )
    except ValueError as err:  # "invalid target URL: ..." from the SDK's core
        raise TemporalAddressInvalid(
            f"invalid settings: TEMPORAL_ADDRESS {settings.temporal_address!r}: {err}"
        ) from err
    except RuntimeError as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TemporalUnavailable(
            f"cannot reach Temporal at {settings.temporal_address} "
            f"(namespace {settings.temporal_namespace}): {first_line}"
        ) from err


def exit_process(code: int) -> None:
    """Exit with ``code`` now, skipping interpreter finalisation.

    The SDK's native threads can abort finalisation (sdk-python issue 300), which would replace
    our exit status with a crash; flushing and leaving with ``os._exit`` keeps the status true.
    A reader that stopped reading (``| head``) is no failure of ours: its flush is skipped.
    Buffered spans are exported first: skipping finalisation skips the SDK's atexit hook too.
    """
    shutdown_tracing()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BrokenPipeError, ValueError):
            stream.flush()
    os._exit(code)
