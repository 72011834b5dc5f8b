"""The dev server's settings that make run and the benchmarks share (local_stack/dev_server.py)."""

from __future__ import annotations

import pytest

from benchmarks.suite import dev_server_args, main
from local_stack.dev_server import DYNAMIC_CONFIG, dynamic_config_args

PACING = "history.transferProcessorMaxPollRPS"


def test_make_run_lifts_the_transfer_queue_pacing() -> None:
    assert int(DYNAMIC_CONFIG[PACING]) > 20  # the server's default paces every hop at ~50 ms
    assert dynamic_config_args() == ["--dynamic-config-value", f"{PACING}=1000"]


def test_the_benchmarks_run_on_make_runs_server_and_an_override_wins_by_key() -> None:
    assert dev_server_args([]) == dynamic_config_args()
    assert dev_server_args([f"{PACING}=20", "limit.x=5"]) == [
        "--dynamic-config-value",
        f"{PACING}=20",
        "--dynamic-config-value",
        "limit.x=5",
    ]


@pytest.mark.parametrize("value", ["no-equals", "=5", f"{PACING}="])
def test_a_malformed_dynamic_config_value_is_refused(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["--dynamic-config", value])
    assert refused.value.code == 2
    assert "KEY=VALUE" in capsys.readouterr().err
