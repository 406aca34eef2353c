"""Where a sequential job resumes: the fingerprint that ties saved progress to the job's
inputs, the state written after each block, and what ``Progress.resume`` makes of it.

The fingerprint is checked against a sha256 worked out here from the documented layout
(config JSON with sorted keys, then each file's ``name:size:mtime_ns`` in name order with
config.json's bytes, then the calibration items), and by changing one input at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import PurePosixPath

import pytest
import torch

from mono_quant.pipeline.activations import ActivationCache
from mono_quant.pipeline.progress import Progress, _well_formed, fingerprint


@pytest.fixture
def files(tmp_path):
    a, cfg = tmp_path / "model.safetensors", tmp_path / "config.json"
    a.write_bytes(b"weights!")
    cfg.write_text('{"hidden_size": 4}')
    os.utime(a, ns=(1, 1_000_000_123))
    os.utime(cfg, ns=(1, 2_000_000_456))
    return [a, cfg]


def test_fingerprint_by_hand(files):
    batches = [{"ids": torch.tensor([[1, 2]], dtype=torch.int32), "n": 3}]
    h = hashlib.sha256(b'{"a": 1, "b": [2, "x"]}')
    h.update(b"config.json:18:2000000456" + b'{"hidden_size": 4}')
    h.update(b"model.safetensors:8:1000000123")
    h.update(b"[1" + b"ids" + b"torch.int32(1, 2)" + b"\x01\0\0\0\x02\0\0\0" + b"n" + b"3")
    assert fingerprint({"b": [2, "x"], "a": 1}, files, batches) == h.hexdigest()
    none = hashlib.sha256(b'{"a": 1}')
    none.update(b"config.json:18:2000000456" + b'{"hidden_size": 4}')
    none.update(b"model.safetensors:8:1000000123" + b"None")
    assert fingerprint({"a": 1}, list(reversed(files)), None) == none.hexdigest()


def test_a_config_value_that_is_not_json_is_hashed_by_its_text(files):
    """``fingerprint`` is public: a config holding a path (or any non-JSON value) hashes as
    the text ``str`` gives it instead of failing."""
    h = hashlib.sha256(b'{"cal": "/data/cal.txt", "n": 2}')
    h.update(b"config.json:18:2000000456" + b'{"hidden_size": 4}')
    h.update(b"model.safetensors:8:1000000123" + b"None")
    payload = {"n": 2, "cal": PurePosixPath("/data/cal.txt")}
    assert fingerprint(payload, files, None) == h.hexdigest()


def test_an_empty_tensor_and_a_non_contiguous_one(files):
    t = torch.arange(6.0).reshape(2, 3)
    assert fingerprint({}, files, [t.t()]) == fingerprint({}, files, [t.t().contiguous()])
    h = hashlib.sha256(b"{}")
    h.update(b"config.json:18:2000000456" + b'{"hidden_size": 4}')
    h.update(b"model.safetensors:8:1000000123" + b"[1" + b"torch.float32(0,)")
    assert fingerprint({}, files, [torch.empty(0)]) == h.hexdigest()


def _change(files, what):
    a, cfg = files
    if what == "size":
        a.write_bytes(b"weights!!")
    elif what == "mtime":
        os.utime(a, ns=(1, 1_000_000_124))
    elif what == "config":  # same size, same mtime, other bytes
        cfg.write_text('{"hidden_size": 5}')
        os.utime(cfg, ns=(1, 2_000_000_456))
    elif what == "name":
        a.rename(a.with_name("model2.safetensors"))
        return [a.with_name("model2.safetensors"), cfg]
    return files


@pytest.mark.parametrize("what", ["size", "mtime", "config", "name"])
def test_a_changed_checkpoint_file_changes_the_fingerprint(files, what):
    before = fingerprint({"a": 1}, files, None)
    assert fingerprint({"a": 1}, _change(files, what), None) != before


def test_weights_are_known_by_size_and_time_not_bytes(files):
    """Only config.json's bytes are read (the weights may be gigabytes)."""
    a, _ = files
    before = fingerprint({}, files, None)
    a.write_bytes(b"WEIGHTS!")
    os.utime(a, ns=(1, 1_000_000_123))
    assert fingerprint({}, files, None) == before


T = torch.tensor([1.0, 2.0])


@pytest.mark.parametrize(("one", "other"), [
    ([T], [T.double()]),  # dtype
    ([T], [T.reshape(2, 1)]),  # shape
    ([T], [T + 1]),  # values
    ([T, T], [[T, T]]),  # nesting
    ([T, T], [T]),  # count
    ([{"a": T}], [{"b": T}]),  # keys
    ([{"a": T}], [{"a": T + 1}]),  # values under a key
    ([1], [2]),  # plain items
    (None, []),
])
def test_changed_calibration_changes_the_fingerprint(files, one, other):
    assert fingerprint({}, files, one) != fingerprint({}, files, other)


def test_dict_order_does_not_matter(files):
    assert fingerprint({"x": 1, "y": 2}, files, [{"a": T, "b": 2 * T}]) == \
        fingerprint({"y": 2, "x": 1}, files, [{"b": 2 * T, "a": T}])


@pytest.mark.parametrize(("state", "ok"), [
    ({"fingerprint": "f", "blocks_done": 0, "activations": None}, True),
    ({"fingerprint": "f", "blocks_done": 3}, True),
    ({"fingerprint": "f", "blocks_done": 3, "activations": "acts-00003.pt"}, True),
    ({"fingerprint": "f", "blocks_done": 3, "activations": "acts-00003"}, True),
    ({"fingerprint": "f", "blocks_done": 3, "activations": "acts-123456"}, True),
    ({"fingerprint": "f", "blocks_done": 3, "activations": "acts-0003.pt"}, False),
    ({"fingerprint": "f", "blocks_done": 3, "activations": "x/acts-00003.pt"}, False),
    ({"fingerprint": "f", "blocks_done": 3, "activations": "acts-00003.pt.tmp"}, False),
    ({"fingerprint": "f", "blocks_done": True}, False),
    ({"fingerprint": "f", "blocks_done": 1.0}, False),
    ({"fingerprint": "f", "blocks_done": -1}, False),
    ({"fingerprint": "f"}, False),
    ({"fingerprint": 1, "blocks_done": 0}, False),
    ({"blocks_done": 0}, False),
    (["fingerprint", "blocks_done"], False),
    (None, False),
])
def test_which_stored_states_are_well_formed(state, ok):
    assert _well_formed(state) is ok


def _state(work) -> dict:
    return json.loads((work / "state.json").read_text())


def test_each_commit_writes_the_state_resume_reads(tmp_path):
    work = tmp_path / "work"
    p = Progress(work, "fp")
    p.commit_block(0, {"b.0.w": torch.ones(2)}, [{"h": torch.zeros(1)}], {"n": 1})
    assert _state(work) == {"fingerprint": "fp", "blocks_done": 1,
                            "activations": "acts-00001.pt", "stats": {"n": 1}}
    p.commit_block(1, {"b.1.w": torch.ones(2)}, None, {"n": 2})  # a block without data
    assert _state(work) == {"fingerprint": "fp", "blocks_done": 2, "activations": None,
                            "stats": {"n": 2}}
    assert sorted(f.name for f in work.iterdir()) == ["parts", "state.json"]  # old acts gone
    saved = Progress(work, "fp").resume()
    assert (saved.blocks_done, saved.activations, saved.stats) == (2, None, {"n": 2})


def test_a_redone_block_keeps_its_new_activations(tmp_path):
    """The same block committed twice (a retried block) names the same file: it stays."""
    work = tmp_path / "work"
    p = Progress(work, "fp")
    p.commit_block(0, {"w": torch.ones(1)}, [{"h": torch.zeros(1)}], {})
    p.commit_block(0, {"w": torch.ones(1)}, [{"h": torch.ones(1)}], {})
    assert torch.equal(Progress(work, "fp").resume().activations[0]["h"], torch.ones(1))


def test_a_state_without_stats_resumes_with_none(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "state.json").write_text(json.dumps({"fingerprint": "fp", "blocks_done": 4,
                                                 "activations": None}))
    saved = Progress(work, "fp").resume()
    assert (saved.blocks_done, saved.activations, saved.stats) == (4, None, {})


@pytest.mark.parametrize("text", ["{not json", ""])
def test_an_unreadable_state_starts_over(tmp_path, text):
    work = tmp_path / "work"
    (work / "parts").mkdir(parents=True)
    (work / "parts" / "00000.safetensors").write_bytes(b"x")
    (work / "state.json").write_text(text)
    assert Progress(work, "fp").resume() is None
    assert not work.exists()


def test_an_offloaded_cache_resumes_from_its_folder(tmp_path):
    work = tmp_path / "work"
    p = Progress(work, "fp", offload_bytes=0)
    cache = p.new_cache(1)
    for i in range(2):
        cache.append({"x": torch.full((2,), float(i))})
    p.commit_block(0, {"w": torch.ones(1)}, cache, {})
    assert _state(work)["activations"] == "acts-00001"
    assert sorted(f.name for f in (work / "acts-00001").iterdir()) == ["00000.pt", "00001.pt"]
    saved = Progress(work, "fp").resume()
    assert isinstance(saved.activations, ActivationCache) and saved.activations.offloaded
    assert [b["x"].tolist() for b in saved.activations] == [[0.0, 0.0], [1.0, 1.0]]
    p.commit_block(1, {"w": torch.ones(1)}, [{"x": torch.ones(1)}], {})  # in memory again
    assert sorted(f.name for f in work.iterdir()) == ["acts-00002.pt", "parts", "state.json"]


def test_a_commit_removes_the_blocks_capture_folders(tmp_path):
    work = tmp_path / "work"
    p = Progress(work, "fp", offload_bytes=0)
    for variant in ("", "half"):
        p.new_cache(0, variant).append({"x": torch.ones(1)})
    assert sorted(f.name for f in work.iterdir()) == [".acts-00000-half.tmp", ".acts-00000.tmp"]
    p.commit_block(0, {"w": torch.ones(1)}, None, {})
    assert sorted(f.name for f in work.iterdir()) == ["parts", "state.json"]


def test_stats_that_are_not_finite_survive_a_resume(tmp_path):
    """An exact block has an infinite SQNR: the state keeps it (JSON's Infinity / NaN)."""
    work = tmp_path / "work"
    Progress(work, "fp").commit_block(0, {"w": torch.ones(1)}, None,
                                      {"sqnr_db": float("inf"), "loss": float("nan")})
    assert '"stats": {"sqnr_db": Infinity, "loss": NaN}' in (work / "state.json").read_text()
    stats = Progress(work, "fp").resume().stats
    assert stats["sqnr_db"] == float("inf") and stats["loss"] != stats["loss"]  # NaN


def test_a_cache_kept_in_memory_is_saved_as_its_batches(tmp_path):
    work = tmp_path / "work"
    p = Progress(work, "fp", offload_bytes=None)
    cache = p.new_cache(1)
    for i in range(2):
        cache.append({"x": torch.full((2,), float(i))})
    assert not cache.offloaded
    p.commit_block(0, {"w": torch.ones(1)}, cache, {})
    assert _state(work)["activations"] == "acts-00001.pt"
    saved = Progress(work, "fp").resume().activations
    assert isinstance(saved, list)
    assert [b["x"].tolist() for b in saved] == [[0.0, 0.0], [1.0, 1.0]]


def test_an_offloaded_cache_is_read_from_where_the_commit_put_it(tmp_path):
    """The next block iterates the same cache object: its folder follows the rename."""
    work = tmp_path / "work"
    p = Progress(work, "fp", offload_bytes=0)
    cache = p.new_cache(1)
    cache.append({"x": torch.full((2,), 7.0)})
    p.commit_block(0, {"w": torch.ones(1)}, cache, {})
    assert cache.folder == work / "acts-00001"
    assert [b["x"].tolist() for b in cache] == [[7.0, 7.0]]


class _Touch:
    """A pickle that creates a file when loaded without ``weights_only``."""

    def __init__(self, path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("force_no", [None, "1"], ids=["default", "TORCH_FORCE_NO_WEIGHTS_ONLY"])
def test_saved_activations_are_loaded_as_weights_only(tmp_path, monkeypatch, force_no):
    """``acts-*.pt`` is read with ``weights_only=True``: a pickle that runs code on load is
    refused, and its code does not run; also where ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set
    (it turns off the check of every ``torch.load`` that does not pass ``weights_only``)."""
    import pickle

    if force_no:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", force_no)
    work, marker = tmp_path / "work", tmp_path / "ran"
    Progress(work, "fp").commit_block(0, {"w": torch.ones(1)}, [{"h": torch.zeros(1)}], {})
    torch.save([_Touch(marker)], work / "acts-00001.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        Progress(work, "fp").resume()
    assert not marker.exists()


def test_a_changed_fingerprint_leaves_folders_that_are_not_ours(tmp_path):
    work = tmp_path / "work"
    Progress(work, "a").commit_block(0, {"w": torch.ones(1)}, [{"h": torch.zeros(1)}], {})
    (work / "logs").mkdir()
    (work / "logs" / "run.txt").write_text("not ours")
    (work / "acts-00002.pt").mkdir()  # named like our file, but a folder
    assert Progress(work, "b").resume() is None
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*")) == [
        "acts-00002.pt", "logs", "logs/run.txt"]
