"""Issue 13: manifests run only allowed code, stay small, and fit the catalog's columns on
SQLite and PostgreSQL alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mono_quant.catalog import Batch, Catalog, Job
from mono_quant.config import Settings
from mono_quant.errors import BadConfigError, BadInputError
from mono_quant.pipeline.allowlist import FactoryAllowList
from mono_quant.scheduler.bounds import MAX_DEPTH
from mono_quant.scheduler.manifest import load_manifest, parse_manifest
from mono_quant.scheduler.service import submit

MLP = "factory:mono_quant.demo_models:mlp"

DEFAULT = FactoryAllowList(("mono_quant.*",))  # the setting's default


def _parse(data, **kw):
    return parse_manifest(data, "jobs.yaml", **kw)


# --- factories -----------------------------------------------------------------------------


@pytest.mark.parametrize("model", [
    "factory:os:system?command=touch%20/tmp/pwned",
    {"factory": "os:system", "kwargs": {"command": "touch /tmp/pwned"}},
], ids=["string", "mapping"])
def test_a_factory_outside_the_allow_list_is_bad_config(model):
    with pytest.raises(BadConfigError, match=r"jobs\[0\]\.model: .*factory module 'os' is not "
                                             "allowed by MONO_QUANT_ALLOWED_FACTORIES"):
        _parse({"jobs": [{"name": "a", "model": model}]}, factories=DEFAULT)


def test_a_calibration_factory_outside_the_allow_list_is_bad_config():
    with pytest.raises(BadConfigError, match=r"jobs\[0\]\.calibration: .*'subprocess' is not "
                                             "allowed"):
        _parse({"jobs": [{"name": "a", "model": MLP, "mode": "static",
                          "calibration": "factory:subprocess:run?args=id"}]},
               factories=DEFAULT)


def test_submit_refuses_the_factory_and_writes_nothing(tmp_path):
    s = Settings.from_env({"MONO_QUANT_DATA_DIR": str(tmp_path)})  # default allow-list
    catalog = Catalog(s.catalog_url)
    catalog.upgrade()
    path = tmp_path / "jobs.yaml"
    path.write_text("jobs:\n  - name: a\n    model: 'factory:os:system?command=id'\n")
    with pytest.raises(BadConfigError, match="MONO_QUANT_ALLOWED_FACTORIES"):
        submit(path, catalog, settings=s)
    with catalog.begin() as session:
        assert session.query(Batch).count() == 0


def test_the_model_source_shown_is_derived_from_the_payload():
    _, (spec,) = _parse({"jobs": [{"name": "a", "model": {
        "factory": "mono_quant.demo_models:mlp", "kwargs": {"seed": 1}}}]})
    assert spec.model_source == "factory:mono_quant.demo_models:mlp?seed=1"
    assert spec.spec.to_payload()["model"]["kwargs"] == {"seed": 1}


# --- size ------------------------------------------------------------------------------------


def test_jobs_per_batch_are_capped_before_expansion():
    data = {"matrix": {"group_size": list(range(1, 101)), "min_layer_size": list(range(100))},
            "jobs": [{"name": "a", "model": MLP}, {"name": "b", "model": MLP}]}
    with pytest.raises(BadInputError, match=r"expands to 20000 jobs \(2 job\(s\) x 10000 matrix "
                                            r"combination\(s\)\); at most 10000 are accepted "
                                            r"per batch \(MONO_QUANT_MAX_JOBS_PER_BATCH\)"):
        _parse(data)
    assert len(_parse(data, max_jobs=20_000)[1]) == 20_000


def test_repeated_matrix_values_are_refused():
    with pytest.raises(BadInputError, match=r"matrix: .*key 'scheme' repeats the value "
                                            r"\"symmetric\""):
        _parse({"matrix": {"scheme": ["symmetric", "asymmetric", "symmetric"]},
                "jobs": [{"name": "a", "model": MLP}]})


_BOMBS = {
    "alias": textwrap.dedent("""\
        a: &a ["xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "xxxxxxxxxxxxxxxxxxxxxxxxxxxx"]
        b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
        c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
        d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
        e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
        f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
        g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
        h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
        i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
        labels: {team: *i}
        jobs: [{name: a, model: "factory:mono_quant.demo_models:mlp", exclude: *i}]
        """),
    "matrix": "matrix:\n" + "".join(
        f"  {key}: [{', '.join(values)}]\n" for key, values in [
            ("group_size", [str(i) for i in range(1, 1001)]),
            ("min_layer_size", [str(i) for i in range(1000)]),
            ("exclude", [f"[l{i}]" for i in range(1000)]),
        ]) + "jobs: [{name: a, model: 'factory:mono_quant.demo_models:mlp'}]\n",
    "nesting": "jobs: [{name: a, model: " + "[" * 100_000 + "]" * 100_000 + "}]\n",
    "json-nesting": '{"jobs": ' + "[" * 100_000 + "]" * 100_000 + "}",
}

_MEASURE = """
import resource, sys, time
from mono_quant.errors import BadInputError
from mono_quant.scheduler.cli import main
from mono_quant.scheduler.manifest import load_manifest
t0 = time.monotonic()  # the refusal itself, imports done (the machine may be busy)
try:
    load_manifest(sys.argv[1])
except BadInputError:
    pass
seconds = time.monotonic() - t0
rc = main(["run", sys.argv[1], "--quiet"])  # and the command a user runs
# VmHWM (peak RSS of this program since exec): ru_maxrss would also count the forking
# parent's RSS on Linux (a pytest process with torch loaded), and fail for no fault of ours.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status")
           if line.startswith("VmHWM:"))
print("RESULT", rc, seconds, hwm)
"""


@pytest.mark.parametrize("bomb", list(_BOMBS), ids=list(_BOMBS))
def test_manifest_bombs_are_refused_quickly_in_little_memory(tmp_path, bomb):
    """In a subprocess with a 2 GiB address-space cap (the unbounded code would take the
    machine down, not just fail); peak RSS from getrusage."""
    path = tmp_path / "bomb.yaml"
    path.write_text(_BOMBS[bomb])
    env = {**os.environ, "MONO_QUANT_DATA_DIR": str(tmp_path / "data")}
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
    out = subprocess.run([sys.executable, "-c", limit + _MEASURE, str(path)], env=env,
                         capture_output=True, text=True, timeout=120)
    result = [line for line in out.stdout.splitlines() if line.startswith("RESULT")]
    assert result, out.stderr[-2000:]
    rc, seconds, peak_kib = result[0].split()[1:]
    assert rc == "2", out.stderr[-2000:]
    assert float(seconds) < 5
    assert int(peak_kib) < 500 * 1024
    message = out.stderr.strip()
    assert message.startswith("mono-quant run: error: ") and len(message) < 2000, message
    assert "Traceback" not in out.stderr


def test_error_messages_are_cut_to_a_sane_length():
    huge = "x" * 5_000_000
    with pytest.raises(BadInputError) as err:
        _parse({"name": 7, "labels": {"a": [huge]}, "jobs": [{"name": "a", "model": MLP,
                                                                "scheme": huge}]})
    assert len(str(err.value)) < 5000


# --- the catalog's columns: the same answer on SQLite and PostgreSQL -------------------------


_TOO_BIG = {
    "long-name": ({"jobs": [{"name": "n" * 256, "model": MLP}]},
                  r"jobs\[0\]\.name: expected at most 255 characters \(got 256\)"),
    "long-matrix-name": ({"matrix": {"exclude": [["e" * 250]]},
                          "jobs": [{"name": "n", "model": MLP}]},
                         r"jobs\[0\] \(matrix exclude=.*\)\.name: expected at most 255"),
    "long-batch-name": ({"name": "b" * 256, "jobs": [{"name": "n", "model": MLP}]},
                        r"name: expected at most 255 characters"),
    "nul-in-name": ({"jobs": [{"name": "a\x00b", "model": MLP}]}, "NUL byte"),
    "nul-in-label": ({"labels": {"t": "a\x00"}, "jobs": [{"name": "a", "model": MLP}]},
                     r"labels\.t: contains a NUL byte"),
    "nul-in-kwargs": ({"jobs": [{"name": "a", "model": {
        "factory": "mono_quant.demo_models:mlp", "kwargs": {"s": "\x00"}}}]}, "NUL byte"),
    "attempts-out-of-range": ({"jobs": [{"name": "a", "model": MLP, "max_attempts": 2**31}]},
                              r"max_attempts: expected an integer from -2147483648 to "
                              "2147483647"),
    "samples-out-of-range": ({"jobs": [{"name": "a", "model": MLP, "samples": 2**31,
                                        "calibration": "factory:mono_quant.demo_models:"
                                                       "vector_batches"}]},
                             "samples: expected an integer"),
    "group-size-out-of-range": ({"jobs": [{"name": "a", "model": MLP, "granularity": "per_group",
                                           "group_size": 2**40}]}, "group_size: expected"),
}


@pytest.mark.parametrize("case", list(_TOO_BIG), ids=list(_TOO_BIG))
def test_values_the_catalog_cannot_store_are_refused_before_it(tmp_path, catalog_url, case):
    data, message = _TOO_BIG[case]
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(data))
    catalog = Catalog(catalog_url)
    with pytest.raises(BadInputError, match=message):
        submit(path, catalog, settings=Settings.from_env({"MONO_QUANT_DATA_DIR": str(tmp_path)}))
    with catalog.begin() as session:
        assert session.query(Job).count() == 0
    catalog.dispose()


def test_values_at_the_limits_are_stored_on_both_backends(tmp_path, catalog_url):
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps({"name": "b" * 255, "labels": {"k": "é" * 1000}, "jobs": [
        {"name": "n" * 255, "model": MLP, "max_attempts": 2**31 - 1, "queue": "gpu." + "x" * 60},
    ]}))
    catalog = Catalog(catalog_url)
    result = submit(path, catalog, settings=Settings.from_env({"MONO_QUANT_DATA_DIR":
                                                              str(tmp_path)}))
    with catalog.begin() as session:
        job = session.get(Job, result.job_ids[0])
        assert (len(job.name), job.max_attempts, len(job.queue)) == (255, 2**31 - 1, 64)
        assert len(job.batch.name) == 255
    catalog.dispose()


def test_load_manifest_reads_what_it_bounds(tmp_path):
    path = tmp_path / "jobs.yaml"
    path.write_text("jobs: [{name: a, model: 'factory:mono_quant.demo_models:mlp'}]\n")
    assert len(load_manifest(path)[1]) == 1


def test_a_fifo_manifest_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "jobs.yaml"
    os.mkfifo(fifo)
    with pytest.raises(BadInputError, match=r"jobs.yaml: is a FIFO \(named pipe\)"):
        load_manifest(fifo)  # a regression would block here (pytest-timeout ends it)


# --- the document walk ---------------------------------------------------------------------


def _shared_doc():
    inner = ["ab", "c"]  # one list used three times, as a YAML alias would be
    return {"a": [inner, inner], "b": {"c": inner, "d": 7}}


@pytest.mark.parametrize("doc, expected", [
    # root, keys a/b, list, "xy", 1, dict, key c, "z\0": 9 values; a b xy c z\0: 7 chars
    ({"a": ["xy", 1], "b": {"c": "z\x00"}}, (9, 7, 2, True)),
    # root, a b, list, 2 x (list, ab, c), dict, c d, (list, ab, c), 7: 17 values; the
    # shared list counts each time it is used (3 x 3 chars) plus the keys a b c d
    (_shared_doc(), (17, 13, 3, False)),
    ([[[[]]]], (4, 0, 4, False)),
    ("top\x00", (1, 4, 0, True)),
], ids=["tree", "shared", "nested", "scalar"])
def test_measure_counts_values_as_expanded(doc, expected):
    from mono_quant.scheduler.bounds import _measure

    assert _measure(doc, "m.yaml") == expected


def test_the_recursive_measure_agrees_with_the_walk_on_random_documents():
    import random

    from mono_quant.scheduler.bounds import _measure, _measure_walk

    rng = random.Random(16)

    def doc(depth):
        r = rng.random()
        if depth > 6 or r < 0.4:
            return rng.choice(["a", "x\x00", "", 1, 2.5, None, True, "long" * 9])
        if r < 0.7:
            return [doc(depth + 1) for _ in range(rng.randrange(4))]
        return {rng.choice(["k", "k2", 3]): doc(depth + 1) for _ in range(rng.randrange(4))}

    docs = [d for d in (doc(0) for _ in range(2000)) if isinstance(d, (dict, list))]
    assert len(docs) > 500
    for d in docs:
        assert _measure(d, "m.yaml") == _measure_walk(d, "m.yaml"), d


@pytest.mark.parametrize("levels, refused", [(64, False), (65, True)], ids=["64", "65"])
def test_depth_limit_is_exact(levels, refused):
    from mono_quant.scheduler.bounds import MAX_DEPTH, check_document

    assert MAX_DEPTH == 64
    doc: list = []
    for _ in range(levels - 1):
        doc = [doc]
    if refused:
        with pytest.raises(BadInputError, match="nested deeper than 64 levels"):
            check_document(doc, "m.yaml")
    else:
        check_document(doc, "m.yaml")


def test_a_cycle_is_refused_by_name():
    from mono_quant.scheduler.bounds import check_document

    loop: list = []
    loop.append(loop)
    with pytest.raises(BadInputError, match=r"m.yaml: a YAML alias refers to itself \(a cycle\)"):
        check_document({"jobs": loop}, "m.yaml")


def _nested(depth: int) -> object:
    value: object = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.mark.parametrize("raw", [
    json.dumps({"jobs": [{"name": "a\u0000b", "model": "factory:m:f"}]}).encode(),
    json.dumps({"labels": {"k\u0000": 1}}).encode(),
    json.dumps(_nested(MAX_DEPTH)).encode(), json.dumps(_nested(MAX_DEPTH + 1)).encode(),
    json.dumps(_nested(MAX_DEPTH - 1)).encode(), b'"just a string"', b"[]",
    json.dumps({"x": "tab\\u0000 not a NUL"}).encode(),
    json.dumps({"jobs": [{"name": "\u00e9"}]}).encode("utf-16"),
    json.dumps({"jobs": ["x\u0000"]}).encode("utf-16"),
    b"labels: &a [1, 2]\nmore: *a\n", b"x: {y: \x00}\n", b"{not json",
    b"a: " + b"[" * 70 + b"]" * 70 + b"\n",
], ids=["nul-in-name", "nul-in-key", "max-depth", "too-deep", "under", "scalar", "empty",
        "escaped-backslash", "utf-16", "utf-16-nul", "yaml-alias", "yaml-nul", "bad",
        "yaml-too-deep"])
def test_reading_and_bounding_in_one_step_is_the_same_as_in_two(raw):
    """``read_checked`` (a shortcut for JSON that can only break the depth bound) accepts and
    refuses exactly what ``read_document`` + ``check_document`` do, with the same message."""
    from mono_quant.scheduler.bounds import check_document, read_checked, read_document

    def two_steps():
        try:
            data = read_document(raw, "m.json")
            check_document(data, "m.json")
        except BadInputError as e:
            return str(e)
        return data

    def one_step():
        try:
            return read_checked(raw, "m.json")
        except BadInputError as e:
            return str(e)

    assert one_step() == two_steps()


def test_a_deep_or_nul_json_manifest_file_is_refused(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"jobs": [{"name": "a\u0000", "model": "factory:m:f"}]}))
    with pytest.raises(BadInputError, match=r"jobs\[0\]\.name: contains a NUL byte"):
        load_manifest(path)
    path.write_text(json.dumps({"jobs": [{"name": "a", "model": _nested(MAX_DEPTH + 1)}]}))
    with pytest.raises(BadInputError, match=f"nested deeper than {MAX_DEPTH} levels"):
        load_manifest(path)
