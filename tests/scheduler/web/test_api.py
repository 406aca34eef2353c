"""The JSON API of ``mono-quant serve``, against a real server over a catalog that a real batch
filled. Expected values come from the catalog read with plain sqlite3 and from the manifest."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import pytest

from tests.scheduler.web.conftest import FAILED, JOBS, SCRIPT_NAME

pytestmark = pytest.mark.slow  # the session's batch takes ~30 s to run once


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_batches_show_progress(get, web_batch):
    r = get("/api/batches")
    assert r.status_code == 200
    [batch] = r.json()
    assert batch["name"] == "web-tests"
    assert batch["jobs"] == JOBS and batch["done"] == JOBS and batch["progress"] == 1.0
    assert batch["counts"]["succeeded"] == JOBS - FAILED
    assert batch["counts"]["failed"] == FAILED
    assert batch["counts"]["running"] == 0


def test_batch_lists_jobs_attempts_errors_and_time(get, web_batch):
    data = get("/api/batches/1").json()
    jobs = {j["id"]: j for j in data["jobs"]}
    rows = web_batch.rows("SELECT j.id, j.name, j.status, a.started_at, a.finished_at, "
                          "a.outcome, a.error, t.id AS artifact_id FROM jobs j "
                          "JOIN attempts a ON a.job_id = j.id "
                          "LEFT JOIN artifacts t ON t.job_id = j.id ORDER BY j.id")
    assert sorted(jobs) == [r["id"] for r in rows] and len(rows) == JOBS
    assert data["counts"] == {"pending": 0, "queued": 0, "running": 0,
                              "succeeded": JOBS - FAILED, "failed": FAILED, "cancelled": 0}
    expected_run: dict[str, float] = {}
    for row in rows:
        job = jobs[row["id"]]
        assert (job["name"], job["status"], job["artifact_id"]) == (
            row["name"], row["status"], row["artifact_id"])
        [attempt] = job["attempt_list"]
        seconds = (datetime.fromisoformat(row["finished_at"])
                   - datetime.fromisoformat(row["started_at"])).total_seconds()
        assert attempt["duration_s"] == pytest.approx(seconds, abs=1e-3)
        assert attempt["outcome"] == row["outcome"]
        expected_run[row["outcome"]] = expected_run.get(row["outcome"], 0.0) + seconds
        if row["name"].startswith("broken"):
            assert job["error_kind"] == "bad_input"
            assert "negative dimension" in job["last_error"]
            assert attempt["error"] == row["error"]
    assert data["time"]["run_s"] == pytest.approx(expected_run, abs=1e-2)
    assert data["time"]["wall_s"] >= max(expected_run.values())
    assert any(j["name"].startswith(SCRIPT_NAME) for j in jobs.values())


def _ids(get, query: str) -> list[int]:
    r = get("/api/artifacts" + query)
    assert r.status_code == 200, r.text
    return [a["id"] for a in r.json()]


def test_artifacts_take_the_catalog_list_filters(get, web_batch):
    newest_first = [r["id"] for r in web_batch.rows(
        "SELECT id FROM artifacts ORDER BY created_at DESC, id DESC")]
    assert _ids(get, "") == newest_first and len(newest_first) == JOBS - FAILED
    static_asym = [r["id"] for r in web_batch.rows(
        "SELECT id FROM artifacts WHERE scheme = 'asymmetric' AND mode = 'static'")]
    assert _ids(get, "?scheme=asymmetric&mode=static") == static_asym and static_asym
    by_size = [r["id"] for r in web_batch.rows(
        "SELECT id FROM artifacts ORDER BY size_bytes, id")]
    assert _ids(get, "?order_by=size_bytes:asc") == by_size
    pt = [r["id"] for r in web_batch.rows(
        "SELECT id FROM artifacts WHERE format = 'pt' ORDER BY created_at DESC, id DESC")]
    assert _ids(get, "?artifact_format=pt&batch=web-tests&status=succeeded") == pt and pt
    assert _ids(get, "?batch=nosuch") == []
    assert _ids(get, "?limit=1") == newest_first[:1]


@pytest.mark.parametrize(("query", "message"), [
    ("?scheme=symetric", "unknown scheme 'symetric'; expected one of symmetric, asymmetric"),
    ("?min_sqnr=lots", "min_sqnr='lots': expected a number"),
    ("?max_size=huge", "size 'huge'"),
    ("?limit=0", "limit=0: expected 1 to 1000"),
    ("?order_by=size", "unknown order field 'size'"),
    ("?colour=red", "unknown parameter(s) colour"),
], ids=["scheme", "min_sqnr", "max_size", "limit", "order_by", "unknown"])
def test_bad_filters_are_400_naming_the_parameter(get, query, message):
    r = get("/api/artifacts" + query)
    assert r.status_code == 400
    assert message in r.json()["error"]


def test_artifact_has_path_metrics_and_layers(get, web_batch):
    [row] = web_batch.rows("SELECT id, storage_key, info FROM artifacts WHERE mode = 'static' "
                           "AND scheme = 'symmetric'")
    data = get(f"/api/artifacts/{row['id']}").json()
    assert data["path"] == str(web_batch.storage_root / row["storage_key"])
    assert Path(data["path"]).is_file()  # the path shown is the artifact people can load
    assert data["uri"] == Path(data["path"]).as_uri()
    info = json.loads(row["info"])
    layers = info["metrics"]["layer_weight_sqnr_db"]
    assert [(x["layer"], x["sqnr_db"]) for x in data["layer_weight_sqnr_db"]] == list(
        layers.items())
    assert len(layers) == 3  # the MLP's three Linear layers
    assert data["config"] == info["config"] and data["config"]["mode"] == "static"
    assert data["layers_float"] == 0 and data["job_name"].startswith("mlp-w8a8")
    assert data["metrics"]["output_cosine"] == pytest.approx(info["metrics"]["output_cosine"])


def test_compare_marks_the_smallest_and_the_best(get, web_batch):
    rows = web_batch.rows("SELECT id, size_bytes, output_cosine, weight_sqnr_db "
                          "FROM artifacts")
    model = web_batch.rows("SELECT model_source FROM artifacts LIMIT 1")[0][0]
    data = get("/api/compare", params={"model": model}).json()
    assert sorted(v["id"] for v in data["variants"]) == sorted(r["id"] for r in rows)
    for axis in ("output_cosine", "weight_sqnr_db"):
        plotted = [r for r in rows if r[axis] is not None and math.isfinite(r[axis])]
        got = data["axes"][axis]
        assert sorted(p["id"] for p in got["points"]) == sorted(r["id"] for r in plotted)
        smallest = min(plotted, key=lambda r: (r["size_bytes"], r["id"]))["id"]
        best = max(plotted, key=lambda r: (r[axis], -r["id"]))["id"]
        assert (got["best_size_id"], got["best_value_id"]) == (smallest, best)
        best_on = {v["id"] for v in data["variants"] if axis in v["best_on"]}
        assert best_on == {best}
    assert get("/api/compare", params={"model": "hf:nosuch/model"}).status_code == 404
    assert get("/api/compare").status_code == 400


def test_unknown_ids_are_404(get):
    assert get("/api/artifacts/999").json() == {"error": "no artifact with id 999 in the catalog"}
    assert get("/api/artifacts/999").status_code == 404
    assert get("/api/batches/999").status_code == 404
    assert get("/batches/999").status_code == 404


@pytest.mark.parametrize("path", [
    "/artifacts/..%2f..%2f..%2fetc%2fpasswd", "/artifacts/1/../../../etc/passwd",
    "/static/..%2f..%2fcatalog.db", "/templates/base.html", "/catalog.db",
], ids=["encoded-dots", "dots", "static", "templates", "db"])
def test_no_url_reaches_the_file_system(get, path):
    r = get(path)
    assert r.status_code == 404 or (r.status_code == 200 and "root:" not in r.text
                                    and "SQLite format" not in r.text)
    assert "root:x:" not in r.text and "{% block" not in r.text


def test_markup_in_names_is_escaped(get, web_batch):
    for path in ("/batches/1", "/artifacts", "/artifacts/1", "/"):
        r = get(path)
        assert r.status_code == 200
        assert "<script>" not in r.text.lower()
        assert "script-src" not in r.headers["content-security-policy"]  # no script runs
    page = get("/batches/1").text
    assert "&lt;script&gt;alert(&#39;mq&#39;)&lt;/script&gt;" in page
