"""What ``make test`` relies on when it runs the tests on two workers (pytest-xdist)."""

from __future__ import annotations

import re

import pytest

pytest_plugins = ["pytester"]


def test_tests_of_one_xdist_group_run_on_one_worker(pytester: pytest.Pytester) -> None:
    # pytest 9.2 with xdist 3.8 spread them silently (pytest-xdist issue 1386): the shared
    # make run stack and every module's server would start on both workers.
    pytester.makepyfile(
        test_grouped="""
        import pytest

        @pytest.mark.xdist_group("shared")
        @pytest.mark.parametrize("n", range(6))
        def test_grouped(n):
            pass

        @pytest.mark.parametrize("n", range(6))
        def test_free(n):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadgroup", "-v", "-p", "xdist")
    result.assert_outcomes(passed=12)
    output = result.stdout.str()
    workers = re.findall(r"\[(gw\d)\].*PASSED test_grouped\.py::test_grouped\[", output)
    assert len(workers) == 6 and len(set(workers)) == 1, output
