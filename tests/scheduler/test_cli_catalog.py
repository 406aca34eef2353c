"""``mono-quant catalog`` and ``mono-quant db`` in real subprocesses, on both backends."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from mono_quant.catalog import ArtifactQuery, Catalog, add_artifact
from tests.catalog import seed as seedmod

pytestmark = pytest.mark.slow  # each CLI call is a fresh interpreter (~2 s)


def cli(*args: str, url: str, storage_root=None, timeout: int = 120):
    env = {**os.environ, "MONO_QUANT_CATALOG_URL": url}
    if storage_root is not None:
        env["MONO_QUANT_STORAGE_ROOT"] = str(storage_root)
    return subprocess.run([sys.executable, "-m", "mono_quant.scheduler.cli", *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture
def seeded(catalog_url):
    catalog = Catalog(catalog_url)
    with catalog.begin() as session:
        records = seedmod.seed(session)
    catalog.dispose()
    return catalog_url, records


def test_db_upgrade_creates_then_reports_up_to_date(empty_url, backend):
    out = cli("catalog", "list", url=empty_url)
    if backend == "sqlite":  # a read-only command does not create the file
        assert out.returncode == 2
        assert "does not exist (a read-only command creates nothing)" in out.stderr
    else:
        assert out.returncode == 1
        assert "no catalog schema; run `mono-quant db upgrade` first" in out.stderr
    out = cli("db", "upgrade", url=empty_url)
    assert out.returncode == 0, out.stderr
    from mono_quant.catalog.db import head_revision

    head = head_revision()
    assert f"upgraded from empty to revision {head}" in out.stdout
    assert f"up to date (revision {head})" in cli("db", "upgrade", url=empty_url).stdout
    out = cli("db", "current", url=empty_url)
    assert (out.returncode, f"revision {head} (head {head}, up to date)" in out.stdout) == (
        0, True)
    out = cli("catalog", "list", "--json", url=empty_url)
    assert (out.returncode, json.loads(out.stdout)) == (0, [])


def test_list_json_csv_and_table(seeded):
    url, records = seeded
    args = ["catalog", "list", "--scheme", "symmetric,asymmetric", "--granularity",
            "per_channel", "--min-sqnr", "30", "--order-by", "weight_sqnr_db:desc", "--limit",
            "0"]
    expected = seedmod.reference(records, ArtifactQuery(
        granularities=["per_channel"], min_sqnr=30.0, order_by="weight_sqnr_db", limit=None))
    assert len(expected) >= 5

    out = cli(*args, "--json", url=url)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["id"] for r in rows] == expected
    by_id = {r["id"]: r for r in records}
    for row in rows:
        want = by_id[row["id"]]["weight_sqnr_db"]
        got = row["weight_sqnr_db"]
        assert got == ({"__float__": "inf"} if want == float("inf") else want)
        assert row["job_status"] == by_id[row["id"]]["job_status"]

    out = cli(*args, "--output-format", "csv", url=url)
    assert out.returncode == 0, out.stderr
    table = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [int(r["id"]) for r in table] == expected
    assert [float(r["weight_sqnr_db"]) for r in table] == [
        by_id[i]["weight_sqnr_db"] for i in expected]

    out = cli(*args[:-2], "--limit", "4", url=url)  # the table, for people
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "JOB", "MODEL", "SCHEME"]
    assert [int(line.split()[0]) for line in lines[1:]] == expected[:4]
    model_col = lines[0].index("MODEL")
    assert all(line[model_col - 2:model_col] == "  " for line in lines)  # aligned columns
    assert "(first 4 rows; --limit 0 for all)" in out.stderr


def test_list_latest_batches_and_models(seeded):
    url, records = seeded
    models = seedmod.MODELS[:2]
    out = cli("catalog", "list", "--latest", "--model", *models, "--batch", "nightly", "2",
              "--status", "succeeded", "--since", "2024-05-03", "--max-size", "80MB",
              "--artifact-format", "safetensors,pt", "--limit", "0", "--json", url=url)
    assert out.returncode == 0, out.stderr
    expected = seedmod.reference(records, ArtifactQuery(
        latest=True, models=models, batches=["nightly", 2], statuses=["succeeded"],
        since=seedmod.T0.replace(day=3), max_size=80_000_000, formats=["safetensors", "pt"],
        limit=None))
    assert [r["id"] for r in json.loads(out.stdout)] == expected and expected


BAD_ARGS = {
    "scheme": (["--scheme", "weird"], "unknown scheme 'weird'; expected one of symmetric"),
    "order": (["--order-by", "size_bytes:up"], "the direction must be asc or desc"),
    "since": (["--since", "soon"], "time 'soon': expected an ISO date"),
}


@pytest.mark.parametrize("name", list(BAD_ARGS), ids=list(BAD_ARGS))
def test_bad_filter_values_exit_2(tmp_path, name):
    args, message = BAD_ARGS[name]
    out = cli("catalog", "list", *args, url=f"sqlite:///{tmp_path / 'c.db'}")
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_unreachable_database_exits_1():
    out = cli("catalog", "list", url="postgresql+psycopg://postgres:pw@127.0.0.1:1/catalog")
    assert out.returncode == 1
    assert "catalog database postgresql+psycopg://postgres:***@127.0.0.1:1/catalog is " \
           "unreachable" in out.stderr
    assert "Traceback" not in out.stderr


def _store(catalog_url, root):
    """Three real artifacts under ``root``: two safetensors files and a folder."""
    from mono_quant import QuantConfig, QuantizationInfo
    from mono_quant.catalog import Batch, Job

    paths = [root / "m/a.safetensors", root / "m/b.safetensors", root / "ct/run"]
    for i, p in enumerate(paths[:2]):
        p.parent.mkdir(parents=True, exist_ok=True)
        save_file({"w": torch.full((16, 16), i, dtype=torch.int8)}, str(p))
    paths[2].mkdir(parents=True)
    (paths[2] / "config.json").write_text("{}")
    info = QuantizationInfo(QuantConfig(), ["fc"], metrics={"weight_sqnr_db": 40.0})
    catalog = Catalog(catalog_url)
    with catalog.begin() as s:
        batch = Batch(name="b")
        ids = []
        for i, p in enumerate(paths):
            job = Job(batch=batch, name=f"j{i}", model_source="hf:o/m", spec={},
                      idempotency_key=f"{i:064x}", queue="cpu")
            s.add(job)
            ids.append(add_artifact(s, job, p, info, storage_root=root).id)
    catalog.dispose()
    return paths, ids


def test_show_and_verify(catalog_url, tmp_path):
    root = tmp_path / "store"
    paths, ids = _store(catalog_url, root)

    out = cli("catalog", "show", str(ids[0]), "--json", url=catalog_url)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert (shown["storage_key"], shown["format"]) == ("m/a.safetensors", "safetensors")
    assert shown["info"]["metrics"] == {"weight_sqnr_db": 40.0}
    out = cli("catalog", "show", str(ids[2]), url=catalog_url)
    assert "storage_key" in out.stdout and "compressed-tensors" in out.stdout
    assert "info:" in out.stdout
    out = cli("catalog", "show", "999", url=catalog_url)
    assert (out.returncode, "no artifact with id 999" in out.stderr) == (2, True)

    out = cli("catalog", "verify", "--all", url=catalog_url, storage_root=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"verified 3 artifact(s) under {root}: 3 ok"

    data = bytearray(paths[0].read_bytes())
    data[-1] ^= 0x80  # flip a bit of the last tensor byte
    paths[0].write_bytes(bytes(data))
    paths[1].unlink()
    out = cli("catalog", "verify", "--all", "--storage-root", str(root), url=catalog_url)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"artifact {ids[0]} m/a.safetensors: CHANGED")
    assert lines[1].startswith(f"artifact {ids[1]} m/b.safetensors: MISSING")
    assert lines[2] == f"verified 3 artifact(s) under {root}: 1 changed, 1 missing, 1 ok"

    out = cli("catalog", "verify", str(ids[2]), "--json", url=catalog_url, storage_root=root)
    assert out.returncode == 0, out.stderr
    assert [(r["artifact_id"], r["status"], r["ok"]) for r in json.loads(out.stdout)] == [
        (ids[2], "ok", True)]
    out = cli("catalog", "verify", url=catalog_url, storage_root=root)
    assert (out.returncode, "give artifact ids or --all" in out.stderr) == (2, True)
