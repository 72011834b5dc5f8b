"""The AWS emulator (``moto_server``) as a real subprocess on a loopback port, for tests.

Usage, in a test module or conftest::

    @pytest.fixture(scope="session")
    def moto() -> Iterator[MotoServer]:
        with running_moto_server() as server:
            yield server

    def test_something(moto: MotoServer) -> None:
        settings = moto_settings(moto)  # unique table, topic and queue names
        clients = AwsClients.from_settings(settings)
        ensure_resources(settings, clients)

While ``running_moto_server()`` is open, the test process's environment points boto3 at the
emulator with dummy credentials (see ``moto_env``), so nothing a test does can reach real AWS.
Pass ``moto_env(server)`` to any subprocess (worker, callbacks API) that should use it too.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from common.aws import AwsClients
from common.settings import Settings
from common.tokens import SigningKey
from local_stack.children import die_with_parent

ACCOUNT_ID = "123456789012"  # moto's default account
REGION = "us-east-1"


@dataclass
class MotoServer:
    """A running ``moto_server``; ``stop()`` ends it (also done by ``running_moto_server``)."""

    endpoint_url: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def log_tail(self, limit: int = 2000) -> str:
        self.log.flush()
        return Path(self.log.name).read_bytes()[-limit:].decode(errors="replace")

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """The emulator stopped (SIGSTOP) for the block: it accepts connections, answers nothing.

        A DynamoDB or SQS outage as a client sees it; SIGCONT at the end, whatever happens."""
        self.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.process.send_signal(signal.SIGCONT)


PICKED_PORTS_FROM = 10_000  # above the well-known and most registered services' ports
# Every port this process has handed out: two picks for one stack (API and metrics, say) are
# both free when picked, and nothing is bound yet, so without this they could be the same port.
_HANDED_OUT: set[int] = set()


def free_loopback_port() -> int:
    """A port free right now on 127.0.0.1 (the caller binds it soon after).

    Picked below the kernel's ephemeral range: a port the kernel hands out (``bind`` to port 0,
    or the local end of any outgoing connection) can be taken by another process between this
    check and the caller's bind, and tests run two at a time (pytest-xdist) on a machine shared
    with other runs. A stack start binds seven ports over several seconds; once, the dev server's
    UI port was taken that way ("address already in use"). Ports below the range are only ever
    taken on purpose.
    """
    low = _ephemeral_ports()[0]
    if low <= PICKED_PORTS_FROM:  # a kernel that picks from (almost) every port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            chosen: int = sock.getsockname()[1]
            return chosen
    for _ in range(200):
        port = random.randrange(PICKED_PORTS_FROM, low)
        if port in _HANDED_OUT:
            continue  # maybe not bound yet by whoever got it: pick another
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (or in TIME_WAIT): pick another
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free loopback port from {PICKED_PORTS_FROM} to {low - 1}")


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for ports it picks itself (Linux; its default elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return 32768, 60999
    return int(low), int(high)


def moto_env(server: MotoServer | str) -> dict[str, str]:
    """Environment for boto3 (in this process or a subprocess) to use the emulator."""
    endpoint = server if isinstance(server, str) else server.endpoint_url
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }


def start_moto_server(timeout: float = 30.0) -> MotoServer:
    """Start ``moto_server`` on a free loopback port and return once it answers HTTP."""
    executable = Path(sysconfig.get_path("scripts")) / "moto_server"
    last_error = ""
    for _ in range(3):  # another process may take the free port before moto binds it
        port = free_loopback_port()
        endpoint = f"http://127.0.0.1:{port}"
        log = tempfile.NamedTemporaryFile(prefix="moto-server-", suffix=".log")  # noqa: SIM115
        process = subprocess.Popen(
            [str(executable), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **moto_env(endpoint)},
            # A test run killed with SIGKILL (a CI job's limit, a stuck run ended by hand) cannot
            # stop its emulators; the kernel then does. Started from the thread of the test's
            # fixture, which lives as long as the run (local_stack/children.py says why).
            preexec_fn=die_with_parent(),
        )
        server = MotoServer(endpoint_url=endpoint, process=process, log=log)
        if _wait_until_answering(server, timeout):
            return server
        last_error = server.log_tail()
        server.stop()
    raise RuntimeError(f"moto_server did not start:\n{last_error}")


def _wait_until_answering(server: MotoServer, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{server.endpoint_url}/moto-api/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer means it is serving
        except OSError:
            time.sleep(0.05)
    return False


@contextmanager
def running_moto_server(timeout: float = 30.0, export_env: bool = True) -> Iterator[MotoServer]:
    """A moto server for the block; with ``export_env`` this process's env points at it."""
    server = start_moto_server(timeout)
    saved = {name: os.environ.get(name) for name in moto_env(server)}
    try:
        if export_env:
            os.environ.update(moto_env(server))
        yield server
    finally:
        if export_env:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        server.stop()


def moto_settings(server: MotoServer | str, **overrides: Any) -> Settings:
    """Settings for the emulator with fresh resource names, so tests never share state.

    Resources are not created here: call ``common.aws_resources.ensure_resources``.
    """
    endpoint = server if isinstance(server, str) else server.endpoint_url
    suffix = uuid.uuid4().hex[:12]
    values: dict[str, Any] = {
        "aws_region": REGION,
        "aws_endpoint_url": endpoint,
        "process_table": f"processes-{suffix}",
        "idempotency_table": f"idempotency-{suffix}",
        "approval_topic_arn": f"arn:aws:sns:{REGION}:{ACCOUNT_ID}:approvals-{suffix}",
        "command_queue_url": f"{endpoint}/{ACCOUNT_ID}/command-one-{suffix}",
        "signing_keys": (SigningKey(kid=f"test-{suffix}", secret=secrets.token_urlsafe(32)),),
    }
    values.update(overrides)
    return Settings(**values)


def record_field(clients: AwsClients, table: str, process_id: str, field: str = "status") -> str:
    """One string field of a process's record in the emulator's table, read consistently."""
    item = clients.dynamodb.get_item(
        TableName=table, Key={"process_id": {"S": process_id}}, ConsistentRead=True
    )["Item"]
    return str(item[field]["S"])
