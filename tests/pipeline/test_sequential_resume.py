"""A sequential run stopped after a block resumes there; a changed input starts over."""

from __future__ import annotations

import pytest
import torch

from mono_quant.io.formats import load_model
from mono_quant.pipeline import run_pipeline
from mono_quant.pipeline.progress import Progress
from tests.io.hf_fixture import CALIBRATION_TEXT
from tests.pipeline.test_sequential import make_folder, spec_of


class Stopped(Exception):
    pass


def stop_after(block: int, stages: list):
    def on_stage(stage: str, **extra) -> None:
        stages.append((stage, extra))
        if stage == "quantizing block" and extra["block"] == block:
            raise Stopped(f"stopped after block {block}")
    return on_stage


def first_block(stages: list) -> tuple[int, bool]:
    (extra,) = [e for s, e in stages if s == "quantizing" and "first_block" in e]
    return extra["first_block"], extra["resumed"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    folder = make_folder(root, "llama-untied", num_hidden_layers=4)
    (root / "cal.txt").write_text(CALIBRATION_TEXT * 2)
    spec = spec_of(folder, root / "cal.txt", "sequential", mode="static", smoothquant=0.5)
    reference = run_pipeline(spec, root / "reference.safetensors")
    return root, spec, load_model(reference.path)


@pytest.mark.slow
def test_a_stopped_run_resumes_at_the_first_unfinished_block(job, tmp_path):
    _, spec, reference = job
    out, stages = tmp_path / "q.safetensors", []
    with pytest.raises(Stopped):
        run_pipeline(spec, out, on_stage=stop_after(2, stages))
    assert not out.exists()
    work = tmp_path / "q.safetensors.work"
    assert sorted(p.name for p in (work / "parts").iterdir()) == ["00000.safetensors",
                                                                 "00001.safetensors"]
    stages.clear()
    result = run_pipeline(spec, out, on_stage=lambda s, **e: stages.append((s, e)))
    assert first_block(stages) == (2, True)
    assert [e["block"] for s, e in stages if s == "quantizing block"] == [3, 4]
    assert result.info.metrics["sequential"]["resumed_at_block"] == 2
    got = load_model(out)
    assert sorted(got) == sorted(reference)
    assert [k for k in got if not torch.equal(got[k], reference[k])] == []
    assert not work.exists()  # a succeeded run leaves only the artifact


@pytest.mark.slow
def test_a_changed_calibration_file_starts_over(job, tmp_path):
    root, spec, reference = job
    out, stages = tmp_path / "q.safetensors", []
    with pytest.raises(Stopped):
        run_pipeline(spec, out, on_stage=stop_after(1, stages))
    cal = root / "cal.txt"
    original = cal.read_text()
    try:
        cal.write_text(original.replace("quick brown fox", "slow green frog"))
        stages.clear()
        run_pipeline(spec, out, on_stage=lambda s, **e: stages.append((s, e)))
        assert first_block(stages) == (0, False)
        assert [e["block"] for s, e in stages if s == "quantizing block"] == [1, 2, 3, 4]
    finally:
        cal.write_text(original)
    changed = load_model(out)
    assert any(not torch.equal(changed[k], reference[k]) for k in reference)


def test_progress_of_another_fingerprint_is_discarded(tmp_path):
    p = Progress(tmp_path / "work", "a")
    p.commit_block(0, {"x.0.w": torch.ones(2)}, [{"h": torch.zeros(1)}], {"n": 1})
    p.commit_block(1, {"x.1.w": torch.ones(2)}, [{"h": torch.ones(1)}], {"n": 2})
    assert sorted(f.name for f in (tmp_path / "work").iterdir()) == ["acts-00002.pt", "parts",
                                                                    "state.json"]
    state = Progress(tmp_path / "work", "a").resume()
    assert (state.blocks_done, state.stats) == (2, {"n": 2})
    assert torch.equal(state.activations[0]["h"], torch.ones(1))
    assert Progress(tmp_path / "work", "b").resume() is None
    assert not (tmp_path / "work").exists()


def test_a_changed_fingerprint_removes_only_progress_files(tmp_path):
    work = tmp_path / "work"
    p = Progress(work, "a")
    p.commit_block(0, {"x.0.w": torch.ones(2)}, [{"h": torch.zeros(1)}], {})
    (work / "notes.txt").write_text("not ours")
    assert Progress(work, "b").resume() is None
    assert sorted(f.name for f in work.iterdir()) == ["notes.txt"]


# --- progress kept in an object store (a moto S3 server on 127.0.0.1) ----------------------


@pytest.fixture(scope="module")
def endpoint():
    from tests.s3server import moto_server

    with moto_server() as url:
        yield url


@pytest.fixture
def work_url(endpoint, monkeypatch, tmp_path):
    """A fresh bucket; the URL of a job's work prefix in it."""
    from tests.s3server import new_bucket, s3_env

    for k, v in s3_env(endpoint).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return f"s3://{new_bucket(endpoint)}/artifacts/ab/k/7.work"


def _stored(endpoint, url: str) -> list[str]:
    """The keys under ``url`` as the server lists them (plain s3fs, no mono-quant code)."""
    from tests.s3server import client

    base = url.removeprefix("s3://")
    return sorted(p.removeprefix(base + "/") for p in client(endpoint).find(base))


def test_progress_in_a_store_resumes_from_another_folder(endpoint, work_url, tmp_path):
    acts = [{"x": torch.arange(6.0).reshape(2, 3)}]
    first = Progress(tmp_path / "node1", "f1", work_url)
    assert first.resume() is None
    first.commit_block(0, {"b.0.w": torch.ones(2)}, acts, {"n": 1})
    first.commit_block(1, {"b.1.w": torch.full((2,), 2.0)}, acts, {"n": 2})
    assert _stored(endpoint, work_url) == ["acts-00002.pt", "parts/00000.safetensors",
                                           "parts/00001.safetensors", "state.json"]
    other = Progress(tmp_path / "node2", "f1", work_url)  # another node: nothing local
    state = other.resume()
    assert state.blocks_done == 2 and state.stats == {"n": 2}
    assert torch.equal(state.activations[0]["x"], acts[0]["x"])
    assert [p.name for p in other.part_files()] == ["00000.safetensors", "00001.safetensors"]
    assert torch.equal(load_model(other.part_files()[1])["b.1.w"], torch.full((2,), 2.0))
    other.remove()
    assert _stored(endpoint, work_url) == [] and not (tmp_path / "node2").exists()


def test_progress_in_a_store_of_another_fingerprint_is_discarded(endpoint, work_url, tmp_path):
    Progress(tmp_path / "node1", "f1", work_url).commit_block(0, {"w": torch.ones(1)}, None, {})
    assert Progress(tmp_path / "node2", "changed", work_url).resume() is None
    assert _stored(endpoint, work_url) == []


@pytest.mark.slow
def test_a_run_stopped_on_one_node_resumes_on_another_from_the_store(job, endpoint, work_url,
                                                                    tmp_path):
    _, spec, reference = job
    (tmp_path / "node1").mkdir()
    (tmp_path / "node2").mkdir()
    stages = []
    with pytest.raises(Stopped):
        run_pipeline(spec, tmp_path / "node1" / "q.safetensors", work_dir=work_url,
                     on_stage=stop_after(2, stages))
    assert _stored(endpoint, work_url) == ["acts-00002.pt", "parts/00000.safetensors",
                                           "parts/00001.safetensors", "state.json"]
    stages.clear()
    out = tmp_path / "node2" / "q.safetensors"  # another scratch folder: only the store
    result = run_pipeline(spec, out, work_dir=work_url,
                          on_stage=lambda s, **e: stages.append((s, e)))
    assert first_block(stages) == (2, True)
    assert result.info.metrics["sequential"]["resumed_at_block"] == 2
    got = load_model(out)
    assert sorted(got) == sorted(reference)
    assert [k for k in got if not torch.equal(got[k], reference[k])] == []
    assert _stored(endpoint, work_url) == []  # a succeeded run leaves no progress behind
    assert not (tmp_path / "node2" / "q.safetensors.work").exists()


@pytest.mark.parametrize("change", [{"activations": "../../outside.pt"},
                                    {"activations": "acts-00001.pt\n"},
                                    {"blocks_done": "2"}, {"blocks_done": -1}],
                         ids=["escaping-name", "newline", "text-count", "negative"])
def test_a_stored_state_changed_by_hand_starts_over(endpoint, work_url, tmp_path, change):
    """The stored state.json names what a resume downloads: one not written by Progress is
    discarded, and nothing is written outside the work folder."""
    import json

    from tests.s3server import client

    acts = [{"x": torch.ones(1)}]
    Progress(tmp_path / "node1", "f1", work_url).commit_block(0, {"w": torch.ones(1)}, acts, {})
    fs, base = client(endpoint), work_url.removeprefix("s3://")
    state = json.loads(fs.cat(f"{base}/state.json"))
    fs.pipe(f"{base}/state.json", json.dumps({**state, **change}).encode())
    node = tmp_path / "a" / "b" / "node2"
    assert Progress(node, "f1", work_url).resume() is None
    assert _stored(endpoint, work_url) == []
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "00000.safetensors", "acts-00001.pt", "state.json"]  # node1's own copy only


def test_an_offloaded_activation_cache_resumes_from_the_store(endpoint, work_url, tmp_path):
    """An activation cache offloaded to disk (a folder of batch files) is uploaded with its
    block and downloaded, file by file, by a resume on another node."""
    first = Progress(tmp_path / "node1", "f1", work_url, offload_bytes=0)
    cache = first.new_cache(1)
    batches = [{"x": torch.full((2, 3), float(i))} for i in range(3)]
    for b in batches:
        cache.append(b)
    assert cache.offloaded
    first.commit_block(0, {"b.0.w": torch.ones(2)}, cache, {"n": 1})
    assert _stored(endpoint, work_url) == [
        "acts-00001/00000.pt", "acts-00001/00001.pt", "acts-00001/00002.pt",
        "parts/00000.safetensors", "state.json"]
    state = Progress(tmp_path / "node2", "f1", work_url).resume()
    assert state.blocks_done == 1 and len(state.activations) == 3
    got = [a["x"] for a in state.activations]
    assert [torch.equal(a, b["x"]) for a, b in zip(got, batches, strict=True)] == [True] * 3


def test_a_stored_cache_folder_with_a_foreign_file_starts_over(endpoint, work_url, tmp_path):
    """A stored cache folder holding a file not named like a batch is not downloaded."""
    from tests.s3server import client

    first = Progress(tmp_path / "node1", "f1", work_url, offload_bytes=0)
    cache = first.new_cache(1)
    cache.append({"x": torch.ones(1)})
    first.commit_block(0, {"w": torch.ones(1)}, cache, {})
    base = work_url.removeprefix("s3://")
    client(endpoint).pipe(f"{base}/acts-00001/evil.sh", b"#!/bin/sh\n")
    node = tmp_path / "node2"
    assert Progress(node, "f1", work_url).resume() is None
    assert not (node / "acts-00001").exists()


def test_stats_that_are_not_finite_resume_from_the_store(endpoint, work_url, tmp_path):
    """The downloaded state.json is written back as it was stored: Infinity and NaN too."""
    stats = {"sqnr_db": float("inf"), "loss": float("nan")}
    Progress(tmp_path / "node1", "f1", work_url).commit_block(0, {"w": torch.ones(1)}, None,
                                                              stats)
    got = Progress(tmp_path / "node2", "f1", work_url).resume().stats
    assert got["sqnr_db"] == float("inf") and got["loss"] != got["loss"]  # NaN
