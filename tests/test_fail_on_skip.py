"""``--fail-on-skip`` (what CI runs): a skipped test fails with its reason, so a missing prerequisite can never
pass as green; without the option a skip stays a skip, and an expected failure (xfail) stays one either way."""

from __future__ import annotations

import pytest
from conftest import REPO

pytest_plugins = ["pytester"]

REASON = "prerequisite missing: /nowhere/shared (fixtures and data, checked out beside the repository)"
TESTS = f"""
import pytest

@pytest.mark.skipif(True, reason={REASON!r})
def test_marked():
    pass

def test_skips_itself():
    pytest.skip({REASON!r})

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_expected_failure():
    assert False

def test_passes():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    """A test folder with the repository's conftest (the option and its hook) and a skipping test module."""
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_prerequisites=TESTS)
    return pytester


def test_without_the_option_a_skip_is_a_skip(suite: pytest.Pytester) -> None:
    result = suite.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([f"SKIPPED [[]1[]] test_prerequisites.py:*: {REASON}"] * 2, consecutive=False)


def test_with_the_option_a_skip_fails_naming_its_reason(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--fail-on-skip")
    # A skip mark acts in setup, so its test is reported as an error; pytest.skip() in the body, as a failure.
    result.assert_outcomes(passed=1, failed=1, errors=1, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    for header in ("_* ERROR at setup of test_marked _*", "_* test_skips_itself _*"):
        result.stdout.fnmatch_lines([
            header, f"skipped: {REASON}",
            "--fail-on-skip makes a skipped test a failure (a missing prerequisite must not pass as green)",
        ])
    assert "skipped" not in result.parseoutcomes()


def test_with_the_option_a_module_that_skips_whole_fails(pytester: pytest.Pytester) -> None:
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_whole=f"import pytest\npytest.skip({REASON!r}, allow_module_level=True)\n")
    pytester.runpytest().assert_outcomes(skipped=1)
    result = pytester.runpytest("--fail-on-skip")
    result.assert_outcomes(errors=1)
    assert result.ret != pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["_* ERROR collecting test_whole.py _*", f"skipped: {REASON}"])
