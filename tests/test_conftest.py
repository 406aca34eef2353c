"""The shared fixtures, run in a scratch pytest session (pytester) to see what it reports."""

from __future__ import annotations

from pathlib import Path

import torch

CONFTEST = Path(__file__).with_name("conftest.py")


def test_cuda_cases_of_the_device_fixture_are_reported(pytester):
    """Without a GPU the CUDA case shows up as SKIPPED with its reason; it never vanishes."""
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile("""
        def test_on(device):
            assert device in ("cpu", "cuda")
    """)
    result = pytester.runpytest_inprocess("-rs", "-v")
    result.stdout.fnmatch_lines(["*test_on?cpu? PASSED*"])
    if torch.cuda.is_available():
        result.assert_outcomes(passed=2)
    else:
        result.assert_outcomes(passed=1, skipped=1)
        result.stdout.fnmatch_lines(
            ["*test_on?cuda? SKIPPED*", "SKIPPED*CUDA is not available on this machine*"])
