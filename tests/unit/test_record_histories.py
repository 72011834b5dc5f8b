"""``record_histories --only``: exact scenario names, and never over a history already recorded.

The recording itself (a dev server, minutes of scenarios) is replaced here by one that writes
the files a scenario would; what is under test is what the command selects and what it lets into
the version folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.workflow.record_histories import __main__ as recorder

# What ``lock_contention`` saves: three process histories and one of the mutex's.
LOCK_CONTENTION_FILES = (
    "process_lock_timeout",
    "process_lock_timeout_deadline_passed",
    "process_cancelled_waiting_for_lock",
    "mutex_queued_requests_cancelled",
)


def names(only: str) -> list[str]:
    return [scenario.__name__ for scenario in recorder.select(only)]


def test_a_name_selects_that_scenario_and_not_those_it_begins() -> None:
    assert names("ops_heartbeat_missed") == ["ops_heartbeat_missed"]
    assert names("completed,rejected") == ["completed", "rejected"]
    with pytest.raises(ValueError) as refused:
        recorder.select("ops_heartbeat")  # was a prefix: it took ops_heartbeats_kept_alive too
    assert str(refused.value) == (
        "no scenario is named ops_heartbeat; ops_heartbeat* would record "
        "ops_heartbeat_missed, ops_heartbeats_kept_alive"
    )


def test_a_pattern_selects_a_group_on_purpose() -> None:
    assert names("ops_heartbeat*") == ["ops_heartbeat_missed", "ops_heartbeats_kept_alive"]
    policy = names("process_policy_*")
    assert len(policy) == 11 and all(name.startswith("process_policy_") for name in policy)
    assert names("") == [scenario.__name__ for scenario in recorder.SCENARIOS]


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The scenarios the command ran; each 'recording' writes ``lock_contention``'s files."""
    ran: list[str] = []

    async def record(
        staging: Path, scenarios: list[recorder.Scenario]
    ) -> tuple[dict[str, int], list[str]]:
        ran.extend(scenario.__name__ for scenario in scenarios)
        for name in LOCK_CONTENTION_FILES:
            (staging / f"{name}.json").write_text("recorded now\n")
        return dict.fromkeys(LOCK_CONTENTION_FILES, 1), []

    monkeypatch.setattr(recorder, "HISTORIES", tmp_path)
    monkeypatch.setattr(recorder, "record", record)
    return ran


def test_only_never_replaces_another_groups_history_without_force(
    tmp_path: Path, recorded: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "v9"
    folder.mkdir()
    kept = folder / "mutex_queued_requests_cancelled.json"
    kept.write_text("recorded before\n")

    assert recorder.main(["v9", "--only", "lock_contention"]) == 1

    assert recorded == ["lock_contention"]
    assert kept.read_text() == "recorded before\n"
    assert [path.name for path in folder.iterdir()] == [kept.name]  # nothing else moved in
    assert [path.name for path in tmp_path.iterdir()] == ["v9"]  # the staging folder is gone
    assert "already holds mutex_queued_requests_cancelled.json: nothing written" in (
        capsys.readouterr().err
    )


def test_only_with_force_replaces_what_it_recorded_and_keeps_the_rest(
    tmp_path: Path, recorded: list[str]
) -> None:
    folder = tmp_path / "v9"
    folder.mkdir()
    (folder / "mutex_queued_requests_cancelled.json").write_text("recorded before\n")
    (folder / "mutex_failed_grant.json").write_text("recorded before\n")

    assert recorder.main(["v9", "--only", "lock_contention", "--force"]) == 0

    assert (folder / "mutex_queued_requests_cancelled.json").read_text() == "recorded now\n"
    assert (folder / "mutex_failed_grant.json").read_text() == "recorded before\n"
    assert sorted(path.stem for path in folder.iterdir()) == sorted(
        [*LOCK_CONTENTION_FILES, "mutex_failed_grant"]
    )


def test_a_bare_prefix_is_refused_before_anything_is_recorded(
    tmp_path: Path, recorded: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        recorder.main(["v9", "--only", "mutex_"])

    assert exited.value.code == 2
    assert recorded == []
    assert "no scenario is named mutex_; mutex_* would record mutex_cancel_ignored" in (
        capsys.readouterr().err
    )
