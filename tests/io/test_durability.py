"""Durability of artifact writes, observed on the real write path.

A crash cannot be staged in a test, so ``os.fsync`` and ``os.replace`` are spied on (the real
calls still run): the spy records which file or folder each fsync reached, by the path of its
file descriptor, and in what order the renames happened. The contract (see ``io/_atomic.py``):
the data is fsynced before the rename that publishes it, and the folder holding the new name
is fsynced after the rename.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from mono_quant import QuantConfig, demo_models, quantize_model, save_model
from mono_quant.io._atomic import atomic_dir, atomic_file

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads fd paths from /proc/self/fd (Linux)"
)


@pytest.fixture
def events(monkeypatch) -> list[tuple[str, ...]]:
    """``("fsync", path)`` and ``("replace", src, dst)`` in call order."""
    log: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        log.append(("replace", str(src), str(dst)))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log


def _index(events, event) -> int:
    assert event in events, f"{event} not in {events}"
    return events.index(event)


def _published(events, final: Path) -> tuple[str, int]:
    """(temporary name, position) of the rename that put ``final`` in place."""
    hits = [(i, e) for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(final)]
    assert len(hits) == 1, events
    i, (_, tmp, _) = hits[0]
    return tmp, i


def _check_file(events, final: Path) -> None:
    tmp, renamed = _published(events, final)
    assert Path(tmp).parent == final.parent and Path(tmp).name.startswith(f".{final.name}.")
    assert _index(events, ("fsync", tmp)) < renamed  # data reached the disk first
    dir_syncs = [i for i, e in enumerate(events) if e == ("fsync", str(final.parent))]
    assert any(i > renamed for i in dir_syncs), events  # then the new name did


def test_atomic_file_fsyncs_data_then_folder(tmp_path, events):
    target = tmp_path / "a.bin"
    with atomic_file(target) as f:
        f.write(b"abc")
    assert target.read_bytes() == b"abc"
    _check_file(events, target)


def test_atomic_dir_fsyncs_folder_then_parent(tmp_path, events):
    target = tmp_path / "art"
    with atomic_dir(target) as tmp, atomic_file(tmp / "x.bin") as f:
        f.write(b"x")
    tmp_name, renamed = _published(events, target)
    assert _index(events, ("fsync", tmp_name)) < renamed
    assert ("fsync", str(tmp_path)) in events[renamed + 1 :]


def test_replacing_a_folder_is_durable(tmp_path, events):
    target = tmp_path / "art"
    for payload in (b"old", b"new"):
        with atomic_dir(target) as tmp:
            (tmp / "x.bin").write_bytes(payload)
    assert (target / "x.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # old copy removed
    last_publish = max(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(target))
    assert ("fsync", str(tmp_path)) in events[last_publish + 1 :]


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_save_model_is_durable(tmp_path, events, fmt):
    qmodel, info = quantize_model(demo_models.mlp(16, 32, 8), QuantConfig(), progress=False)
    path = save_model(qmodel, tmp_path / f"q.{fmt}", info)
    _check_file(events, path)


def test_save_compressed_tensors_is_durable(tmp_path, events):
    qmodel, info = quantize_model(demo_models.mlp(16, 32, 8), QuantConfig(), progress=False)
    path = save_model(qmodel, tmp_path / "q", info, format="compressed-tensors")
    tmp_dir, renamed = _published(events, path)
    for name in ("model.safetensors", "config.json"):  # each file inside, in the temp folder
        _check_file(events[:renamed], Path(tmp_dir) / name)
    assert _index(events, ("fsync", tmp_dir)) < renamed
    assert ("fsync", str(tmp_path)) in events[renamed + 1 :]
