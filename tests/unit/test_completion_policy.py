"""The completion policy of the parallel command phase, as the original's completion config."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from workflows.messages import CompletionPolicy

ALL = CompletionPolicy()


@pytest.mark.parametrize(
    ("policy", "succeeded", "failed", "decided", "satisfied"),
    [
        # Nothing set: every command must succeed; the first failure settles it.
        (ALL, 0, 0, False, True),
        (ALL, 1, 0, False, True),
        (ALL, 2, 0, True, True),
        (ALL, 0, 1, True, False),
        (ALL, 1, 1, True, False),
        # A tolerated failure: wait for both, succeed with one failure, fail with two.
        (CompletionPolicy(tolerated_failure_count=1), 1, 0, False, True),
        (CompletionPolicy(tolerated_failure_count=1), 0, 1, False, True),
        (CompletionPolicy(tolerated_failure_count=1), 1, 1, True, True),
        (CompletionPolicy(tolerated_failure_count=1), 0, 2, True, False),
        # Percentages are of all commands: 50 % of 2 tolerates one failure.
        (CompletionPolicy(tolerated_failure_percentage=50), 1, 1, True, True),
        (CompletionPolicy(tolerated_failure_percentage=49), 0, 1, True, False),
        # min_successful settles as soon as it is reached, or once it cannot be.
        (CompletionPolicy(min_successful=1), 1, 0, True, True),
        (CompletionPolicy(min_successful=1), 0, 1, False, True),
        (CompletionPolicy(min_successful=1), 0, 2, True, False),
        (CompletionPolicy(min_successful=2), 1, 0, False, True),
        (CompletionPolicy(min_successful=2), 0, 1, True, False),
        # Both: one success is enough while no failure has come.
        (CompletionPolicy(min_successful=1, tolerated_failure_count=0), 1, 0, True, True),
        (CompletionPolicy(min_successful=1, tolerated_failure_count=0), 0, 1, True, False),
    ],
)
def test_policy(
    policy: CompletionPolicy, succeeded: int, failed: int, decided: bool, satisfied: bool
) -> None:
    assert policy.is_decided(succeeded, failed, 2) is decided
    if decided:
        assert policy.is_satisfied(succeeded, failed, 2) is satisfied


def test_min_successful_above_the_number_of_commands_is_refused() -> None:
    with pytest.raises(ValidationError):
        CompletionPolicy(min_successful=3)
