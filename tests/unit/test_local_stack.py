"""``make run``'s pieces that need no process: the children's environment."""

from __future__ import annotations

from pathlib import Path

from local_stack.environment import child_environment
from local_stack.settings import LocalStackSettings


def test_every_part_listens_on_the_configured_host(tmp_path: Path) -> None:
    settings = LocalStackSettings(host="127.0.0.5", data_dir=tmp_path)
    env = child_environment(settings, "k1:secret", base={"APPROVAL_METRICS_PORT": "1"})
    listening = {name: env[name] for name in env if name.endswith("_HOST")}
    assert listening == {
        "APPROVAL_API_HOST": "127.0.0.5",
        "APPROVAL_METRICS_HOST": "127.0.0.5",
        "SIMULATOR_HOST": "127.0.0.5",
        "INBOX_HOST": "127.0.0.5",
    }
    assert "APPROVAL_METRICS_PORT" not in env  # only the worker gets it, from the stack
