"""Worker Versioning from the settings: both names or neither, and what each worker registers."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from temporalio.common import VersioningBehavior
from temporalio.workflow import _Definition

from common.settings import Settings, describe_error
from worker import WORKFLOWS, deployment_config, workflows_for
from workflows.mutex import MutexWorkflow
from workflows.process import ProcessWorkflow
from workflows.versioning import AutoUpgradeMutexWorkflow

KEY = "k1:" + "s" * 40


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    monkeypatch.setenv("APPROVAL_SIGNING_KEYS", KEY)
    for name in ("APPROVAL_DEPLOYMENT_NAME", "APPROVAL_BUILD_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_without_a_version_the_worker_runs_unversioned(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(monkeypatch)
    assert deployment_config(settings) is None
    assert workflows_for(settings) == WORKFLOWS == [ProcessWorkflow, MutexWorkflow]


def test_a_versioned_worker_pins_by_default_and_the_mutex_auto_upgrades(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings(
        monkeypatch, APPROVAL_DEPLOYMENT_NAME="approval-flow", APPROVAL_BUILD_ID="2026-12-04.1"
    )
    config = deployment_config(settings)
    assert config is not None and config.use_worker_versioning
    assert (config.version.deployment_name, config.version.build_id) == (
        "approval-flow",
        "2026-12-04.1",
    )
    assert config.default_versioning_behavior == VersioningBehavior.PINNED
    assert workflows_for(settings) == [ProcessWorkflow, AutoUpgradeMutexWorkflow]
    mutex = _Definition.must_from_class(AutoUpgradeMutexWorkflow)
    assert mutex.name == "MutexWorkflow"
    assert mutex.versioning_behavior == VersioningBehavior.AUTO_UPGRADE
    # Only the subclass says so: an unversioned worker may not complete tasks with a behaviour.
    assert _Definition.must_from_class(ProcessWorkflow).versioning_behavior == (
        VersioningBehavior.UNSPECIFIED
    )
    assert _Definition.must_from_class(MutexWorkflow).versioning_behavior == (
        VersioningBehavior.UNSPECIFIED
    )
    # The subclass keeps every signal and the query of the mutex it extends.
    base = _Definition.must_from_class(MutexWorkflow)
    assert set(mutex.signals) == set(base.signals) and set(mutex.queries) == set(base.queries)


@pytest.mark.parametrize("given", ["APPROVAL_DEPLOYMENT_NAME", "APPROVAL_BUILD_ID"])
def test_one_name_without_the_other_is_refused(monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    with pytest.raises(ValidationError) as err:
        _settings(monkeypatch, **{given: "x"})
    assert describe_error(err.value) == (
        "invalid settings: APPROVAL_BUILD_ID set APPROVAL_DEPLOYMENT_NAME and "
        "APPROVAL_BUILD_ID together, or neither"
    )
