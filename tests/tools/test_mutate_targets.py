"""Which mutants ``tools/mutate.py GROUP --again`` runs (no mutmut run: the choice alone)."""

from __future__ import annotations

from tools import mutate

M = "mono_quant.pipeline.progress."


def test_again_runs_only_the_undetected_mutants_of_the_groups_functions():
    """mutmut's result file holds every mutant of the module; the functions outside the
    group's globs are "not checked" there and must not be run (the resume group mutates 8
    of progress.py's functions: an --again run took 300 mutants instead of 100)."""
    group = mutate.Group({"src/mono_quant/pipeline/progress.py": ("x_fingerprint*",
                                                                   "xǁProgressǁresume*")},
                         ("tests/pipeline/test_progress_resume.py",))
    before = {"src/mono_quant/pipeline/progress.py": {
        M + "x_fingerprint__mutmut_1": 1,  # killed
        M + "x_fingerprint__mutmut_2": 0,  # survived
        M + "x_fingerprint__mutmut_3": None,  # not reached
        M + "x_fingerprint__mutmut_4": 36,  # mutmut's timeout: re-run
        M + "xǁProgressǁresume__mutmut_1": 0,
        M + "xǁProgressǁremove__mutmut_1": None,  # outside the group
        M + "x__fsync__mutmut_1": 0,  # outside the group
    }}
    assert mutate._again_targets(group, before) == [
        M + "x_fingerprint__mutmut_2", M + "x_fingerprint__mutmut_3",
        M + "x_fingerprint__mutmut_4", M + "xǁProgressǁresume__mutmut_1"]
