"""Mutation testing with mutmut over the modules whose bugs corrupt results silently.

``make mutate`` runs every group below; ``python tools/mutate.py quant io`` runs some of them;
``python tools/mutate.py --report`` prints the scores of the last runs again. Results and
the score per module are printed as a table (see ``docs/mutation.md`` for the last scores
and the surviving mutants judged equivalent).

Why a staging copy: mutmut copies the sources into ``mutants/`` and imports them from there
by the module name their path gives (``src/mono_quant/io/formats.py`` → ``mono_quant.io.
formats``). ``worker/`` and ``scheduler/`` live outside ``src/`` and are installed under
``mono_quant`` by setuptools' ``package-dir``; in ``.mutate/<group>/`` they are copied to where
they are installed (``src/mono_quant/worker``), so mutmut names them as they are imported.
Each group runs in its own staging folder with only the focused tests of its modules (the
model-level tests are left out: on a small machine they make a run take hours), and mutmut
then runs, per mutated function, only the tests that call it.

Not part of CI: a full run takes tens of minutes. Add each new numeric or state-machine
module to ``GROUPS`` (SmoothQuant, GPTQ, the sequential resume and admission are there).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / ".mutate"


ALL = ("*",)


@dataclass(frozen=True)
class Group:
    """Modules mutated together and the tests that may kill their mutants.

    ``modules`` maps a file (as installed: ``src/mono_quant/...``) to mutmut name globs of
    the functions mutated in it (``*``: all of them; ``xǁJobSpecǁ*``: the methods of a class;
    ``x__digest*``: the module-level function ``_digest``).
    """

    modules: dict[str, tuple[str, ...]]
    tests: tuple[str, ...]
    #: pytest ``-k`` expression: cases left out of the mutation run (they still run in CI)
    skip: str = ""


Q, IO, CAT = "src/mono_quant/quant/", "src/mono_quant/io/", "src/mono_quant/catalog/"

#: The mutation set: one home. One group per module, each with the narrowest test files that
#: check it (mutmut then runs, per mutated function, only the tests that call it).
GROUPS: dict[str, Group] = {
    "primitives": Group(
        {Q + "primitives.py": ALL},
        ("tests/quant/test_primitives.py", "tests/quant/test_fake_quantize.py",
         "tests/quant/test_bounds.py", "tests/quant/test_primitive_contract.py"),
    ),
    "specs": Group(
        {Q + "specs.py": ALL},
        ("tests/quant/test_specs.py", "tests/quant/test_qconfig.py",
         "tests/quant/test_bounds.py", "tests/quant/test_primitives.py"),
    ),
    "observers": Group(
        {Q + "observers.py": ALL},
        ("tests/quant/test_observers.py", "tests/quant/test_observer_errors.py",
         "tests/quant/test_bounds.py"),
    ),
    "kernels": Group(
        {Q + "_kernels.py": ALL},
        ("tests/quant/test_kernels.py", "tests/quant/test_primitives.py",
         "tests/quant/test_fake_quantize.py", "tests/quant/test_bounds.py"),
        # the three hypothesis properties (200 examples, most of a mutant's time here) check
        # bounds the exact float64-reference cases of the same files already pin bit for bit
        skip="(half_a_step or exactly_representable or idempotent)",
    ),
    # weight_error's chunked sums against hand-made quantized tensors: quantize_model's default
    # config no longer calls it (quant/_measured.py), so test_metrics.py alone did not reach it
    "metrics": Group({Q + "metrics.py": ALL},
                     ("tests/quant/test_metrics.py", "tests/quant/test_weight_error.py")),
    # the one-pass rounding and error sums, checked bit for bit against quantize_weight +
    # weight_error (the quantize_model case runs a small model through both paths)
    "measured": Group({Q + "_measured.py": ALL}, ("tests/quant/test_measured.py",)),
    "smoothquant": Group(
        {Q + "smoothquant.py": ALL},
        ("tests/quant/test_smoothquant.py", "tests/quant/test_smooth_registry.py",
         "tests/quant/test_smooth_discovery.py"),
        # the transformers-model cases (identity, the llama registry, unmapped layers) take
        # a minute each here, the slow whole-model comparison (never_costs) more; the
        # discovery and formula cases and the registry stand-ins of test_smooth_registry.py
        # run the same code on small models
        skip="(identity or unmapped or llama or never_costs)",
    ),
    # per-token dynamic activations and the int8 GEMM (vLLM's kernel), checked against a
    # float64 reference and hand-worked rows
    "dynamic": Group(
        {Q + "dynamic.py": ALL},
        ("tests/quant/test_dynamic.py",),
        # loading a dynamic folder in transformers (~9 s a case here, most of a mutant's
        # time); the round-trip cases of the same file read the same folder back
        skip="transformers_loads",
    ),
    # the SmoothQuant strength search: its direct cases (test_smoothsearch.py), the held-out,
    # num_samples and off-first cases of test_smooth_discovery.py and the per-mode choice of
    # test_smoothquant.py
    "smoothsearch": Group(
        {Q + "smoothsearch.py": ALL},
        ("tests/quant/test_smoothsearch.py", "tests/quant/test_smooth_discovery.py",
         "tests/quant/test_smoothquant.py"),
        # the transformers-model and whole-model cases, as in the smoothquant group
        skip="(identity or unmapped or llama or never_costs)",
    ),
    "gptq": Group(
        {Q + "gptq.py": ALL},
        ("tests/quant/test_gptq_reference.py", "tests/quant/test_gptq.py"),
        # the model-level case runs quantize_model three times (minutes per mutant here)
        skip="quantize_model",
    ),
    "header": Group(
        {IO + "_safetensors_header.py": ALL},
        ("tests/io/test_header_layout.py", "tests/io/test_header_read.py",
         "tests/io/test_header_fields.py", "tests/io/test_corrupt.py",
         "tests/io/test_header_store.py"),
    ),
    "atomic": Group({IO + "_atomic.py": ALL},
                    ("tests/io/test_durability.py", "tests/io/test_atomic_helpers.py")),
    "formats": Group(
        {IO + "formats.py": ALL},
        ("tests/io/test_formats.py", "tests/io/test_compressed_config.py",
         "tests/io/test_corrupt.py", "tests/io/test_format_errors.py",
         # the sharded output (_write_shards, _read_sharded, _sharded_info): without this
         # file their mutants had no test (session 6)
         "tests/io/test_sharded.py",
         # the sharded and int-quantized compressed-tensors folders, the format read back
         # from config.json, the whole refusal messages (session 6, m17f)
         "tests/io/test_format_branches.py"),
        # loading the shards in transformers (a model per case): the index and shard bytes
        # are pinned exactly, and the reads checked, by the other cases of the same file.
        # Also left out (10.6 of the 12.4 s the group's tests take; m17f, session 6): a
        # killed writer process (atomic_file's, measured by the atomic group), a malicious
        # .pt (read_pt's refusal, io/_pt.py; formats' pt reads are in the round trips) and the
        # sharded Llama reload (the same save_model / read_info / load_quantized path as
        # test_format_branches.py's small sharded cases)
        skip="(loads_in_transformers or killed_writer or malicious_pt or reload_equals_unsharded)",
    ),
    # the PostgreSQL twin of each catalog case doubles the time and kills the same SQL mutants
    "jobs": Group(
        {CAT + "jobs.py": ALL},
        ("tests/catalog/test_jobs.py", "tests/catalog/test_job_transitions.py",
         "tests/catalog/test_job_columns.py"),
        skip="postgresql",
    ),
    "queries": Group(
        {CAT + "queries.py": ALL},
        ("tests/catalog/test_queries.py", "tests/catalog/test_thresholds.py",
         "tests/catalog/test_records.py", "tests/catalog/test_artifact_records.py",
         "tests/catalog/test_sorted_pages.py", "tests/catalog/test_llm_columns.py",
         "tests/catalog/test_queries_statements.py"),
        # test_sorted_pages.py: the sorted pages (_page_ids, _probed_page, _page: no other
        # file reaches them) through the range-probe and plan cases; its every-field sweep
        # (~50 s here) checks the same orders over more fields. test_llm_columns.py: the
        # smoothquant filter (no other file of the group sets it)
        skip="(postgresql or every_sort_field)",
    ),
    "key": Group(
        # only the idempotency key and the payload: the reference (to_payload, _plain, the
        # digest) and the fast texts a submit writes (JobSpec._texts, the cached _frame /
        # _frame_texts / _part_texts, the copies with_model makes)
        {"src/mono_quant/pipeline/spec.py": (
            "xǁJobSpecǁto_payload*", "xǁJobSpecǁ_parts*", "xǁJobSpecǁ_texts*",
            "xǁJobSpecǁwith_model*", "x__idempotency_key*", "x__plain*", "x__frame*",
            "x__part_texts*")},
        ("tests/pipeline/test_key_texts.py", "tests/pipeline/test_idempotency.py",
         "tests/scheduler/test_manifest.py"),
        # the four hypothesis properties (100-300 random specs each, ~14 s a mutant here);
        # test_key_texts.py writes the same texts out by hand for each optional part
        skip="(exactly_when or ignores_name or fast_texts or share_its_texts)",
    ),
    # the sequential pipeline's resume: the fingerprint, the stored state it writes after each
    # block and what resume makes of it (the folder's other writers, assembling the artifact,
    # are not the resume decision)
    "resume": Group(
        {"src/mono_quant/pipeline/progress.py": (
            "x_fingerprint*", "x__hash_item*", "x__well_formed*", "xǁProgressǁresume*",
            "xǁProgressǁ_pull*", "xǁProgressǁ_state*", "xǁProgressǁcommit_block*",
            "xǁProgressǁ_remove_local*")},
        ("tests/pipeline/test_progress_resume.py", "tests/pipeline/test_sequential_resume.py"),
        # the three whole-model runs (minutes per mutant here); the Progress cases of the
        # same file and test_progress_resume.py call the same functions directly
        skip="(stopped_run_resumes or changed_calibration or run_stopped_on_one_node)",
    ),
    # admission: the memory estimate from the headers and the fit decision
    "admission": Group(
        {"src/mono_quant/worker/admission.py": ALL},
        ("tests/worker/test_admission_estimates.py", "tests/worker/test_admission.py"),
        # run_job through a catalog (seconds per case); the estimate and the verdicts they
        # reach are the direct cases' (the requeue itself is worker/job.py's, not mutated)
        skip="(job_that or admitted_job or admission_off)",
    ),
}

#: Names for several groups at once (``tools/mutate.py quant``).
SETS = {
    "quant": ("primitives", "specs", "observers", "kernels", "metrics", "measured",
              "smoothquant", "dynamic", "smoothsearch", "gptq"),
    "io": ("header", "atomic", "formats"),
    "catalog": ("jobs", "queries"),
    "pipeline": ("key", "resume"),
    "worker": ("admission",),
}

#: Where setuptools' package-dir installs the top-level packages.
INSTALLED = {"worker": "src/mono_quant/worker", "scheduler": "src/mono_quant/scheduler"}

#: mutmut's exit-code verdicts that count as detected.
DETECTED = {"killed", "timeout", "segfault", "caught by type check"}
#: mutmut's exit codes of a mutant a run did not finish: not reached yet, or stopped by
#: Ctrl-C (pytest's 2). Such a mutant keeps the verdict an ``--again`` run kept for it.
UNFINISHED = (None, 2)


def _stage(name: str, group: Group) -> Path:
    """A copy of the working tree (tracked and new files) laid out as installed."""
    dest = STAGE / name
    if dest.exists():
        shutil.rmtree(dest)
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
        capture_output=True, text=True,
    ).stdout.splitlines()
    for rel in files:
        top = rel.split("/", 1)[0]
        target = INSTALLED[top] + rel[len(top):] if top in INSTALLED else rel
        src = ROOT / rel
        if src.is_file():
            (dest / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / target)
    config = {
        "source_paths": ["src"],
        "only_mutate": list(group.modules),
        "pytest_add_cli_args_test_selection": list(group.tests),
        # torch.compile cannot trace mutmut's trampolines: the compiled-kernel cases are left
        # out (the eager kernels share the formulas and are what the other tests run)
        "pytest_add_cli_args": ["-q", "-k", " and ".join(
            f"not {k}" for k in ("compiled", group.skip) if k)],
        "process_isolation": "forkserver",
    }
    with open(dest / "pyproject.toml", "a", encoding="utf-8") as f:
        f.write("\n[tool.mutmut]\n")
        for key, value in config.items():
            f.write(f"{key} = {json.dumps(value)}\n")
    return dest


def _patterns(group: Group) -> list[str]:
    return [f"{_module(path)}.{glob}" for path, globs in group.modules.items() for glob in globs]


def _module(path: str) -> str:
    return path.removeprefix("src/").removesuffix(".py").replace("/", ".")


def run(name: str, children: int, again: bool = False) -> int:
    """Run one group; ``again``: only the mutants not detected by its last run, keeping the
    verdicts of the others (after new tests: re-measures in minutes instead of hours).

    The verdicts kept are saved in ``.mutate/<group>.verdicts.json`` before the run, outside
    the staging folder it replaces, and every read (:func:`_exit_codes`) lays mutmut's
    verdicts of this run over them as they come: a run stopped part-way (Ctrl-C, SIGTERM, a
    killed machine) loses only the mutants it had not reached, which keep their last verdict.
    """
    group = GROUPS[name]
    before = _exit_codes(name) if again else {}
    targets = _again_targets(group, before) if again else _patterns(group)
    if again and not targets:
        print(f"== {name}: no surviving mutants to run again", flush=True)
        return 0
    if again:
        _check_unchanged(name, group)
    _save_ledger(name, before)
    dest = _stage(name, group)
    env = {**os.environ, "MONO_QUANT_COMPILE": "never", "OMP_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *targets]
    print(f"== {name}: mutmut run of {len(targets)} pattern(s)/mutant(s)", flush=True)
    try:
        return subprocess.run(cmd, cwd=dest, env=env).returncode
    finally:  # also on Ctrl-C: mutmut's own tools (mutmut results) see every verdict
        _write_back(name)


def _again_targets(group: Group, before: dict[str, dict[str, int | None]]) -> list[str]:
    """The mutants an ``--again`` run checks: those of the group's functions that its last
    run did not detect. mutmut's result files hold every mutant of a module, the functions
    outside the group's globs too ("not checked" there: never the group's to run).

    A timeout is re-run too: mutmut also stops a child after a wall-clock bound
    ((test time + 1 s) x timeout_multiplier), which a clean run can pass on a loaded machine.
    """
    wanted = _patterns(group)
    return sorted(k for codes in before.values() for k, v in codes.items()
                  if _verdict(v) not in DETECTED - {"timeout"}
                  and any(fnmatch.fnmatchcase(k, w) for w in wanted))


def _ledger(name: str) -> Path:
    """The verdicts an ``--again`` run keeps (outside ``.mutate/<group>/``, which a run
    replaces)."""
    return STAGE / f"{name}.verdicts.json"


def _save_ledger(name: str, codes: dict[str, dict[str, int | None]]) -> None:
    """Keep ``codes`` for the run that starts (none: a full run, which keeps nothing)."""
    ledger = _ledger(name)
    if not codes:
        ledger.unlink(missing_ok=True)
        return
    STAGE.mkdir(exist_ok=True)
    tmp = ledger.with_name(ledger.name + ".tmp")
    tmp.write_text(json.dumps(codes))
    os.replace(tmp, ledger)


def _write_back(name: str) -> None:
    """Put the merged verdicts (the kept ones and this run's) into mutmut's result files."""
    for path, codes in _exit_codes(name).items():
        meta = _meta(name, path)
        if meta.exists():
            data = json.loads(meta.read_text())
            data["exit_code_by_key"] = codes
            meta.write_text(json.dumps(data))


def _source(path: str) -> Path:
    """The working tree's file of a module named as installed (``src/mono_quant/worker/..``
    is ``worker/..``)."""
    for top, installed in INSTALLED.items():
        if path.startswith(installed + "/"):
            return ROOT / (top + path[len(installed):])
    return ROOT / path


def _check_unchanged(name: str, group: Group) -> None:
    """``--again`` keeps verdicts by mutant name (a function and a number): they mean
    nothing once the module changed since the run that gave them."""
    for path in group.modules:
        staged = STAGE / name / path
        if staged.exists() and staged.read_bytes() != _source(path).read_bytes():
            raise SystemExit(f"{_source(path).relative_to(ROOT)} changed since the last run "
                             f"of group {name!r}: its verdicts name other mutants now; run "
                             "the group again in full (without --again)")


def _meta(name: str, path: str) -> Path:
    return STAGE / name / "mutants" / f"{path}.meta"


def _exit_codes(name: str) -> dict[str, dict[str, int | None]]:
    """module file -> {mutant name: mutmut exit code}: the verdicts an ``--again`` run kept,
    with those of the group's last run over them (a mutant it has not reached yet keeps the
    kept one)."""
    kept = json.loads(_ledger(name).read_text()) if _ledger(name).exists() else {}
    out = {}
    for path in GROUPS[name].modules:
        codes = dict(kept.get(path, {}))
        if _meta(name, path).exists():
            now = json.loads(_meta(name, path).read_text())["exit_code_by_key"]
            codes.update({k: v for k, v in now.items() if v not in UNFINISHED or k not in codes})
        if codes:
            out[path] = codes
    return out


def _verdict(code: int | None) -> str:
    from mutmut.stats import status_by_exit_code

    return status_by_exit_code[code]


def _verdicts(name: str) -> dict[str, dict[str, str]]:
    """module file -> {mutant name: verdict} from mutmut's result files of one group."""
    out: dict[str, dict[str, str]] = {}
    group = GROUPS[name]
    for path, codes in _exit_codes(name).items():
        wanted = [f"{_module(path)}.{glob}" for glob in group.modules[path]]
        out[path] = {k: _verdict(v) for k, v in codes.items()
                     if any(fnmatch.fnmatchcase(k, w) for w in wanted)}
    return out


def report(names: list[str]) -> list[tuple[str, int, int, int, float]]:
    """Print and return (module, detected, survived, not run, score %) per module."""
    rows = []
    print(f"{'module':48} {'killed':>7} {'survived':>8} {'other':>6} {'score':>7}")
    for name in names:
        for path, verdicts in _verdicts(name).items():
            killed = sum(v in DETECTED for v in verdicts.values())
            survived = sum(v == "survived" for v in verdicts.values())
            other = len(verdicts) - killed - survived  # not checked, no tests, suspicious
            score = 100.0 * killed / (killed + survived) if killed + survived else float("nan")
            rows.append((path, killed, survived, other, score))
            print(f"{path:48} {killed:7} {survived:8} {other:6} {score:6.1f}%")
    return rows


def survivors(names: list[str]) -> None:
    for name in names:
        for verdicts in _verdicts(name).values():
            for mutant, verdict in sorted(verdicts.items()):
                if verdict not in DETECTED:
                    print(f"{verdict:12} {mutant}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="*", metavar="GROUP",
                        help=f"groups or sets to run (default: all of {', '.join(GROUPS)}; "
                        f"sets: {', '.join(SETS)})")
    parser.add_argument("--report", action="store_true", help="only print the last scores")
    parser.add_argument("--survivors", action="store_true", help="list surviving mutants")
    parser.add_argument("--again", action="store_true",
                        help="run only the mutants the last run did not detect (or timed out)")
    parser.add_argument("--children", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    args = parser.parse_args(argv)
    unknown = [g for g in args.groups if g not in GROUPS and g not in SETS]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; expected some of "
                     f"{', '.join([*GROUPS, *SETS])}")
    names = [n for g in args.groups for n in SETS.get(g, (g,))] or list(GROUPS)
    failed = []
    if not (args.report or args.survivors):
        failed = [n for n in names if run(n, args.children, args.again) != 0]
    if args.survivors:
        survivors(names)
    report(names)
    if failed:
        print(f"mutmut failed for: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
