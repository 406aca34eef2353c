"""The operator's command line (issue 14): ids and names, exit codes, paths, new commands.

Every test runs ``mono-quant`` in this process (``cli.main``) against a real SQLite catalog
with real artifact files (``ux_catalog``); retry publishes to the real test Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from safetensors import safe_open
from sqlalchemy import select

from mono_quant.catalog import Catalog, Job, JobStatus
from mono_quant.config import get_settings
from mono_quant.scheduler import cli
from mono_quant.scheduler.commands import jobs as jobs_cmd
from tests.scheduler.ux_catalog import UxCatalog, build
from tests.worker.harness import REPO, redis_db

BROKER = redis_db(13)


@pytest.fixture
def ux(tmp_path, monkeypatch) -> UxCatalog:
    monkeypatch.setenv("MONO_QUANT_DATA_DIR", str(tmp_path / "data"))
    for name in ("MONO_QUANT_CATALOG_URL", "MONO_QUANT_STORAGE_ROOT", "MONO_QUANT_DB_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MONO_QUANT_BROKER_URL", BROKER)
    get_settings.cache_clear()

    def app():
        from mono_quant.worker.app import create_app

        return create_app(get_settings())

    monkeypatch.setattr(jobs_cmd, "_app", app)
    redis.Redis.from_url(BROKER).flushdb()
    yield build(tmp_path)
    redis.Redis.from_url(BROKER).flushdb()
    get_settings.cache_clear()


@pytest.fixture
def mq(capsys):
    """Run ``mono-quant ARGS`` here; returns (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = cli.main(list(argv))
        except SystemExit as e:  # argparse: --help, --version, usage errors
            code = int(e.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def _jobs(url: str) -> dict[str, Job]:
    catalog = Catalog(url)
    with catalog.begin() as session:
        jobs = {j.name: j for j in session.scalars(select(Job))}
        session.expunge_all()
    catalog.dispose()
    return jobs


def test_version(mq):
    code, out, _ = mq("--version")
    from importlib.metadata import version

    assert (code, out.strip()) == (0, f"mono-quant {version('mono-quant')}")


def test_status_takes_a_batch_name_and_skips_the_empty_rerun(ux, mq):
    code, out, err = mq("status", "ux")
    assert code == 0, err
    assert out.startswith("batch 1 (ux): 5 job(s): cancelled 1, failed 2, succeeded 2; "
                          "2 artifact(s)")
    # plain status: the newest batch with jobs (batch 2 is a re-run where all were skipped)
    code, out, _ = mq("status", "--json")
    assert (code, json.loads(out)["batch"]) == (0, 3)
    code, _, err = mq("status", "nosuch")
    assert code == 2
    assert "no batch with name 'nosuch' in the catalog" in err


def test_unknown_things_exit_2_and_say_so(ux, mq):
    cases = {
        ("cancel", "99"): "no batch with id '99'",
        ("cancel", "--job", "99"): "no job with id 99",
        ("retry", "--batch", "nosuch"): "no batch with name 'nosuch'",
        ("catalog", "list", "--batch", "nosuch"): "no batch named 'nosuch'",
        ("catalog", "show", "99"): "no artifact with id 99",
        ("catalog", "path", "99"): "no artifact with id 99",
        ("jobs", "--batch", "nosuch"): "no batch with name 'nosuch'",
        ("jobs", "--state", "bogus"): "expected one of pending",
        ("jobs", "show", "99"): "no job with id 99",
        ("inspect", "99"): "no artifact with id 99",
        ("export", "99", "out"): "no artifact with id 99",
    }
    for argv, message in cases.items():
        code, _, err = mq(*argv)
        assert (argv, code) == (argv, 2), err
        assert message in err, (argv, err)


def test_empty_answers_to_valid_queries_exit_0(ux, mq):
    code, out, _ = mq("catalog", "list", "--batch", "other", "--json")
    assert (code, json.loads(out)) == (0, [])
    code, out, _ = mq("jobs", "--state", "running", "--json")
    assert (code, json.loads(out)) == (0, [])


def test_cancel_explains_what_it_left_alone(ux, mq):
    code, out, _ = mq("cancel", "ux")
    assert code == 0
    assert out.splitlines() == [
        "cancelled 0 job(s)",
        "not cancelled 2 job(s) 1, 2: already succeeded: only pending, queued and running "
        "jobs can be cancelled",
        "not cancelled 2 job(s) 3, 4: already failed: only pending, queued and running jobs "
        "can be cancelled",
        "not cancelled 1 job(s) 5: already cancelled: only pending, queued and running jobs "
        "can be cancelled",
    ]
    code, out, _ = mq("cancel", "other")
    assert (code, out.splitlines()[0]) == (0, "cancelled 1 job(s): 6")


def test_retry_skips_bad_input_and_says_why(ux, mq):
    code, out, err = mq("retry", "--batch", "ux")
    assert code == 0, err
    assert out.splitlines() == [  # the succeeded jobs of the batch are not listed
        "re-enqueued 1 job(s): 4",
        "not retried 1 job(s) 3: failed with bad_input: retrying cannot help until the "
        "input changes (--include-bad-input retries anyway)",
        "not retried 1 job(s) 5: cancelled by a user: retry re-enqueues failed jobs only; "
        "submit the manifest again to redo them",
    ]
    jobs = _jobs(ux.url)
    assert (jobs["flaky"].status, jobs["broken"].status) == (JobStatus.QUEUED, JobStatus.FAILED)
    assert redis.Redis.from_url(BROKER).llen("cpu") == 1  # one message, for job 4

    code, out, _ = mq("retry", "--job", "3", "--job", "1", "--include-bad-input")
    assert (code, out.splitlines()) == (0, [
        "re-enqueued 1 job(s): 3",
        "not retried 1 job(s) 1: succeeded: nothing to retry (submit --force redoes a job)"])
    assert _jobs(ux.url)["broken"].status is JobStatus.QUEUED


def test_list_show_and_json_give_absolute_paths_and_uris(ux, mq):
    code, out, err = mq("catalog", "list", "--batch", "ux", "--json", "--order-by", "id:asc")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["id"] for r in rows] == sorted(ux.artifact_paths)
    for row in rows:
        path = ux.artifact_paths[row["id"]]
        assert row["path"] == str(path.resolve()) and Path(row["path"]).is_absolute()
        assert row["uri"] == path.resolve().as_uri()
        assert row["weight_observer"] == "minmax" == row["observer"]  # old key: deprecated
    assert [r["job_name"] for r in rows] == ["mlp-sym", "mlp-asym"]

    code, out, _ = mq("catalog", "list", "--batch", "1", "--order-by", "id:asc")
    header, first = out.splitlines()[:2]
    assert header.split()[:3] == ["ID", "JOB", "MODEL"] and header.endswith("PATH")
    assert " 1 mlp-sym " in first and first.endswith(str(ux.artifact_paths[1].resolve()))

    code, out, _ = mq("catalog", "show", "2", "--json")
    assert json.loads(out)["path"] == str(ux.artifact_paths[2].resolve())
    code, out, _ = mq("catalog", "path", "2")
    assert (code, out.strip()) == (0, str(ux.artifact_paths[2].resolve()))
    code, out, _ = mq("catalog", "path", "2", "--uri")
    assert out.strip() == ux.artifact_paths[2].resolve().as_uri()


def test_output_format_and_its_deprecated_spelling(ux, mq):
    code, new, err = mq("catalog", "list", "--output-format", "csv")
    assert code == 0 and "deprecated" not in err
    assert new.splitlines()[0].split(",")[:3] == ["id", "model_source", "model_digest"]
    code, old, err = mq("catalog", "list", "--format", "csv")
    assert (code, old) == (0, new)
    assert "--format is deprecated and will be removed; use --output-format" in err


def test_weight_observer_is_one_word_everywhere(mq):
    parser = cli.build_parser()
    args = parser.parse_args(["quantize", "hf:x", "-o", "y.safetensors",
                              "--weight-observer", "mse"])
    assert args.weight_observer == "mse"
    from mono_quant.catalog import Artifact
    from mono_quant.catalog.queries import RECORD_FIELDS

    assert "weight_observer" in RECORD_FIELDS and "observer" not in RECORD_FIELDS
    assert Artifact.weight_observer.property.columns[0].name == "observer"  # no migration


def test_deprecated_observer_flag_still_works_with_a_notice(capsys):
    args = cli.build_parser().parse_args(["quantize", "hf:x", "-o", "y.safetensors",
                                          "--observer", "percentile"])
    assert args.weight_observer == "percentile"
    assert "--observer is deprecated and will be removed; use --weight-observer" in \
        capsys.readouterr().err


def test_inspect_and_export_take_an_artifact_id(ux, mq, tmp_path):
    code, out, err = mq("inspect", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["config"]["scheme"] == "symmetric"

    dst = tmp_path / "serve"
    code, out, err = mq("export", "1", str(dst))
    assert code == 0, err
    assert sorted(p.name for p in dst.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "quantization_info.json",
        "tokenizer.json"]
    assert (dst / "tokenizer.json").read_text() == (ux.source_dir / "tokenizer.json").read_text()
    with safe_open(dst / "model.safetensors", "pt") as f:
        assert f.get_tensor("0.weight").dtype.is_floating_point is False
    card = (dst / "README.md").read_text()
    assert "| weight_observer | minmax |" in card and f"hf:{ux.source_dir}" in card
    code, _, err = mq("export", "1", str(dst))  # never over what is there
    assert code == 2 and "exists and is not an empty folder" in err


def test_catalog_helpers_resolve_and_load_an_artifact(ux):
    import torch

    from mono_quant.catalog import artifact_path_by_id, load_artifact
    from mono_quant.io import load_model
    from mono_quant.quant.modules import QuantLinear
    from tests.scheduler.ux_catalog import tiny_model

    catalog = Catalog(ux.url)
    assert artifact_path_by_id(catalog, 2) == ux.artifact_paths[2].resolve()
    qmodel = load_artifact(catalog, 2, tiny_model())
    assert isinstance(qmodel[0], QuantLinear)
    stored = load_model(ux.artifact_paths[2])
    assert torch.equal(qmodel[0].weight, stored["0.weight"])
    catalog.dispose()


def test_batches_jobs_and_job_attempts(ux, mq):
    code, out, _ = mq("batches", "--json")
    rows = json.loads(out)
    assert [(b["id"], b["name"], b["jobs"], b["artifacts"]) for b in rows] == [
        (3, "other", 1, 0), (2, "ux", 0, 0), (1, "ux", 5, 2)]
    assert rows[2]["counts"] == {"succeeded": 2, "failed": 2, "cancelled": 1}

    code, out, _ = mq("jobs", "--batch", "ux", "--state", "failed,cancelled", "--json")
    assert [(j["id"], j["state"]) for j in json.loads(out)] == [
        (3, "failed"), (4, "failed"), (5, "cancelled")]
    code, out, err = mq("jobs", "--limit", "2", "--json")
    assert [j["id"] for j in json.loads(out)] == [1, 2] and "(more: --after 2)" in err
    code, out, _ = mq("jobs", "--limit", "2", "--after", "2", "--json")
    assert [j["id"] for j in json.loads(out)] == [3, 4]

    code, out, _ = mq("jobs", "show", "4")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "job 4 flaky (batch 1 ux): failed"
    table = lines[lines.index(next(x for x in lines if x.startswith("#"))):]
    assert table[1].split()[:8] == ["1", "2026-01-05", "09:00:00", "2026-01-05", "09:00:12",
                                    "12.0", "s", "gpu0@node-a"]
    assert "cuda:1" in table[2] and "2.5 s" in table[2] and "database is locked" in table[2]
    detail = json.loads(mq("jobs", "show", "4", "--json")[1])
    assert [a["duration_s"] for a in detail["attempt_rows"]] == [12.0, 2.5]


def test_status_watch_follows_until_final(ux, mq):
    import threading

    from mono_quant.catalog import jobs as job_state

    def cancel_soon():
        import time

        time.sleep(0.6)
        catalog = Catalog(ux.url)
        with catalog.begin() as session:
            job_state.cancel_jobs(session, batch_id=3)
        catalog.dispose()

    thread = threading.Thread(target=cancel_soon)
    thread.start()
    code, out, _ = mq("status", "other", "--watch", "--interval", "0.1")
    thread.join()
    lines = [x for x in out.splitlines() if x.startswith("batch 3")]
    assert code == 0 and len(lines) >= 2
    assert lines[0] == "batch 3 (other): 1 job(s): queued 1; 0 artifact(s)"
    assert lines[-1] == "batch 3 (other): 1 job(s): cancelled 1; 0 artifact(s)"


def test_submit_job_selects_one_job_of_the_manifest(tmp_path, monkeypatch):
    from mono_quant.errors import BadInputError
    from mono_quant.scheduler.service import submit

    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(json.dumps({"name": "two", "jobs": [
        {"name": "a", "model": "factory:mono_quant.demo_models:mlp"},
        {"name": "b", "model": "factory:mono_quant.demo_models:mlp?hidden=16"},
    ]}))
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    catalog.upgrade()
    result = submit(manifest, catalog, app=None, only=["b"], force=True)
    with catalog.begin() as session:
        names = list(session.scalars(select(Job.name).where(Job.batch_id == result.batch_id)))
    assert names == ["b"]
    with pytest.raises(BadInputError, match=r"no job named 'c'; its jobs are: a, b"):
        submit(manifest, catalog, app=None, only=["c"])
    catalog.dispose()


def test_broken_pipe_ends_quietly(ux):
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}",
           "MONO_QUANT_DATA_DIR": str(ux.root.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "mono_quant.scheduler.cli", "catalog",
                             "list", "--output-format", "csv"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written (`| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err


@pytest.mark.slow  # two embedded runs in fresh interpreters with spawned job processes
def test_run_one_job_forced_events_apart_and_no_bars_without_a_terminal(tmp_path):
    from tests.worker.harness import base_env
    from tests.worker.harness import cli as run_cli

    manifest = tmp_path / "two.yaml"
    manifest.write_text(json.dumps({"name": "two", "jobs": [
        {"name": "a", "model": "factory:mono_quant.demo_models:mlp?hidden=16"},
        {"name": "b", "model": "factory:mono_quant.demo_models:mlp?hidden=24"},
    ]}))
    env = base_env(MONO_QUANT_DATA_DIR=str(tmp_path / "data"),
                   PYTHONPATH=f"{REPO / 'src'}:{REPO}")
    events = tmp_path / "events.jsonl"
    out = run_cli("run", str(manifest), "--events", str(events), env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr and "{" not in out.stderr  # no bar redraws, no JSON lines
    kinds = [json.loads(line)["event"] for line in events.read_text().splitlines()]
    assert kinds.count("succeeded") == 2 and kinds.count("started") == 2

    out = run_cli("run", str(manifest), "--job", "b", "--force", "--quiet", env=env,
                  timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "batch 2 (two): 1 job(s): succeeded 1; 1 artifact(s)"
    assert lines[1].split()[:3] == ["ID", "JOB", "MODEL"]  # the artifact table, as submit
    assert lines[2].split()[1:3] == ["3", "b"] and len(lines) == 3  # job 3 only
    assert out.stderr == ""
