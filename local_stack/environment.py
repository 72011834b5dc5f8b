"""Before anything starts: free ports, the signing key, and the environment every part shares."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shlex
import socket
from datetime import UTC, datetime
from pathlib import Path

from local_stack.settings import REGION, LocalStackSettings
from local_stack.versioning import worker_version

SIGNING_KEY_FILE = "signing-keys"
SIGNING_SECRET_BYTES = 48  # URL-safe text of 64 characters; the tokens need at least 32 bytes
SETTINGS_FILE = "stack.env"
# The variables the project's own programs read (common/settings.py; the `temporal` CLI reads
# TEMPORAL_ADDRESS too); the simulator's and the inbox's are make run's business alone.
SHARED_PREFIXES = ("APPROVAL_", "TEMPORAL_", "AWS_")
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class StackError(Exception):
    """The stack cannot start; the message is one line for the terminal."""


def check_ports(settings: LocalStackSettings) -> None:
    """Refuse to start when a port is taken or given twice: one clear line, no traceback."""
    seen: dict[int, str] = {}
    for port, _what, setting in settings.ports():
        if port in seen:
            raise StackError(f"{seen[port]} and {setting} are both set to port {port}")
        seen[port] = setting
    for port, what, setting in settings.ports():
        if not port_is_free(settings.host, port):
            raise StackError(
                f"port {port} ({what}) is already in use; set {setting} to another port "
                "or stop what is using it"
            )


def port_is_free(host: str, port: int) -> bool:
    """True when a server could listen on ``host:port`` now (as the servers here do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR, so a socket lingering in TIME_WAIT does not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise StackError(f"cannot use {host}:{port}: {err.strerror}") from err
    return True


def signing_keys(data_dir: Path) -> str:
    """The key that signs approval links, made on the first run and kept in the data folder.

    Kept so the links already mailed still verify after a restart.
    """
    path = data_dir / SIGNING_KEY_FILE
    if path.exists():
        keys = path.read_text().strip()
        if keys:
            return keys
    kid = "local-" + datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    keys = f"{kid}:{secrets.token_urlsafe(SIGNING_SECRET_BYTES)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(keys + "\n")
    return keys


def child_environment(
    settings: LocalStackSettings, keys: str, base: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment every child shares: the user's, with the stack's addresses on top.

    Everything that says where a part of the stack is, is the stack's to decide; anything else
    (table names, the task queue, ``APPROVAL_LOG_JSON``, ``SIMULATOR_FAILURE_RATE``) passes
    through from the user's environment.
    """
    env = dict(os.environ if base is None else base)
    # Nothing here may reach real AWS or a Temporal elsewhere.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "TEMPORAL_API_KEY"):
        env.pop(name, None)
    data = settings.data_dir
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "TEMPORAL_ADDRESS": settings.temporal_address,
            "TEMPORAL_TLS": "false",
            "AWS_ENDPOINT_URL": settings.moto_url,
            "AWS_ACCESS_KEY_ID": "local-stack",
            "AWS_SECRET_ACCESS_KEY": "local-stack",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "APPROVAL_COMMAND_QUEUE_URL": settings.command_queue_url,
            "APPROVAL_COMMAND_URL": settings.command_url,
            "APPROVAL_CALLBACK_BASE_URL": settings.url(settings.api_port),
            "APPROVAL_API_HOST": settings.host,
            "APPROVAL_API_PORT": str(settings.api_port),
            "APPROVAL_METRICS_HOST": settings.host,
            "APPROVAL_INBOX_URL": settings.url(settings.inbox_port),
            "SIMULATOR_HOST": settings.host,
            "SIMULATOR_PORT": str(settings.simulator_port),
            "SIMULATOR_COMMAND_PATH": "/commands/two",
            "SIMULATOR_STATE_PATH": str(data / "simulator-journal.jsonl"),
            "INBOX_HOST": settings.host,
            "INBOX_PORT": str(settings.inbox_port),
            "INBOX_STORE_PATH": str(data / "inbox.jsonl"),
        }
    )
    # The API serves its metrics on its own port; only the worker opens APPROVAL_METRICS_PORT.
    env.pop("APPROVAL_METRICS_PORT", None)
    env.setdefault("APPROVAL_SIGNING_KEYS", keys)
    # The version whole, for every child: `APPROVAL_BUILD_ID=local-2 make run` names only a build
    # and make run supplies the deployment; a child reading half a version refuses it.
    env.update(worker_version(env))
    return env


def temporal_server_environment(env: dict[str, str]) -> dict[str, str]:
    """The dev server's environment: the children's, without the ``OTEL_*`` variables.

    They are meant for this project's programs. The server reads them as its own and refuses an
    exporter it does not have (``OTEL_TRACES_EXPORTER=console`` stopped ``make run`` before it
    started), and its internal spans belong to no process's trace.
    """
    return {name: value for name, value in env.items() if not name.startswith("OTEL_")}


def shared_settings(env: dict[str, str]) -> dict[str, str]:
    """Of the worker's environment, what a worker, API or CLI run beside the stack needs.

    Not its metrics port: a second worker would find it taken.
    """
    return {
        name: value
        for name, value in sorted(env.items())
        if name.startswith(SHARED_PREFIXES)
        and name != "APPROVAL_METRICS_PORT"
        and _SHELL_NAME.fullmatch(name)
    }


def write_settings_file(data_dir: Path, settings: dict[str, str]) -> Path:
    """Write ``settings`` as a file a POSIX shell sources (``. .data/stack.env``); its path.

    Made again at every start (the ports may have moved), mode 0600 from the first byte: it
    holds the signing key. Replaced in one step, so a reader never sees half a file.
    """
    path = data_dir / SETTINGS_FILE
    partial = path.with_name(path.name + ".partial")
    lines = [
        "# make run's settings, for a worker, the callbacks API or a CLI run beside it:",
        f"#   . {shlex.quote(str(path))} && .venv/bin/python -m worker   (docs/operations.md)",
        "# Written at each start of make run. It holds the signing key: keep it to yourself.",
        *(f"export {name}={shlex.quote(value)}" for name, value in settings.items()),
    ]
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write("\n".join(lines) + "\n")
    os.replace(partial, path)
    return path
