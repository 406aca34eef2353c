"""Issue 13: files given to the library are data; writes never destroy what they did not
create; special files never block; full disks are transient on every format."""

from __future__ import annotations

import errno
import os
import pickle
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from mono_quant import QuantConfig, quantize_model, quantize_weight_int8, read_info, save_model
from mono_quant.catalog import ErrorKind
from mono_quant.errors import BadConfigError, BadInputError, StorageError
from mono_quant.io import load_model
from mono_quant.pipeline import parse_calibration_source, parse_model_source
from mono_quant.pipeline.allowlist import FactoryAllowList
from mono_quant.worker.job import classify
from tests.io.hf_fixture import make_hf_folder

DEFAULT = FactoryAllowList(("mono_quant.*",))  # the setting's default


def _tiny_quantized():
    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    return quantize_model(model, QuantConfig(), progress=False)


# --- factories are opt-in code ---------------------------------------------------------------


def test_allow_list_patterns():
    allow = FactoryAllowList.parse("mono_quant.*, acme.models")
    assert [allow.allows(m) for m in ("mono_quant", "mono_quant.demo_models", "acme.models",
                                      "acme.models.x", "mono_quant_evil", "os")] == [
        True, True, True, False, False, False]
    assert FactoryAllowList.parse("*").allows("os")
    assert not FactoryAllowList.parse("").allows("mono_quant.demo_models")  # none: nothing


def test_a_factory_outside_the_list_is_refused_before_its_module_is_imported():
    module = "tests.io.never_imported_factory"  # does not exist: importing it would fail
    with pytest.raises(BadConfigError, match=r"factory module 'tests.io.never_imported_factory'"
                                             r" is not allowed by MONO_QUANT_ALLOWED_FACTORIES"):
        parse_model_source(f"factory:{module}:f", factories=DEFAULT)
    source = parse_model_source(f"factory:{module}:f")  # the library alone: the caller vouches
    with pytest.raises(BadConfigError, match="MONO_QUANT_ALLOWED_FACTORIES"):
        source.load(DEFAULT)
    assert module not in sys.modules
    with pytest.raises(BadConfigError, match="MONO_QUANT_ALLOWED_FACTORIES"):
        parse_calibration_source("factory:os:listdir", factories=DEFAULT)


@pytest.mark.parametrize("target", [
    "mono_quant.demo_models:torch.load",  # an allowed module's import of another module
    "mono_quant.demo_models:nn.Linear",
    "mono_quant.demo_models:torch",
], ids=["function-of-torch", "class-of-torch", "a-module"])
def test_an_allowed_module_cannot_reach_other_modules_callables(target):
    source = parse_model_source(f"factory:{target}", factories=DEFAULT)
    with pytest.raises(BadConfigError, match="is not allowed by MONO_QUANT_ALLOWED_FACTORIES"):
        source.load(DEFAULT)


def test_private_attributes_are_refused():
    with pytest.raises(BadConfigError, match="'__builtins__' is private"):
        parse_model_source("factory:mono_quant.demo_models:__builtins__.get",
                           factories=DEFAULT)


# --- writes never destroy what they did not create -------------------------------------------


@pytest.mark.parametrize("name", ["notes.safetensors", "notes.pt"], ids=["safetensors", "pt"])
def test_save_model_keeps_a_file_it_did_not_write(tmp_path, name):
    target = tmp_path / name
    target.write_text("my notes")
    qmodel, info = _tiny_quantized()
    with pytest.raises(BadInputError, match=rf"{name}: exists and is not a \w+ artifact "
                                            r"written by mono-quant \(it has no mono-quant"):
        save_model(qmodel, target, info)
    assert target.read_text() == "my notes"
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left either


def test_save_model_replaces_its_own_artifact(tmp_path):
    qmodel, info = _tiny_quantized()
    path = save_model(qmodel, tmp_path / "a.pt", info)
    qmodel2, info2 = quantize_model(torch.nn.Sequential(torch.nn.Linear(8, 4)),
                                    QuantConfig(scheme="asymmetric"), progress=False)
    save_model(qmodel2, path, info2)
    assert read_info(path) == info2


def test_save_model_does_not_write_through_a_symlink(tmp_path):
    outside = tmp_path / "outside.safetensors"
    outside.write_text("precious")
    (tmp_path / "link.safetensors").symlink_to(outside)
    qmodel, info = _tiny_quantized()
    with pytest.raises(BadInputError, match="it is a symbolic link"):
        save_model(qmodel, tmp_path / "link.safetensors", info)
    assert outside.read_text() == "precious"


def test_a_compressed_tensors_write_never_replaces_a_model_folder(tmp_path):
    victim = make_hf_folder(tmp_path / "victim")
    (victim / "notes.txt").write_text("my notes")
    before = {p.name: p.read_bytes() for p in victim.iterdir()}
    qmodel, info = _tiny_quantized()
    with pytest.raises(BadInputError, match="victim: exists and is not a compressed-tensors "
                                            "artifact written by mono-quant"):
        save_model(qmodel, victim, info, format="compressed-tensors")
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == before


# --- files are data; special files never block ---------------------------------------------


def _unblock_after(path: Path, seconds: float) -> threading.Thread:
    """If a reader is stuck opening the FIFO, a writer that comes and goes frees it (so a
    regression fails the timing assertion instead of hanging the suite)."""
    def writer():
        time.sleep(seconds)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass  # no reader waiting: nothing to free

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("name", ["pipe.safetensors", "pipe.pt"], ids=["safetensors", "pt"])
def test_a_fifo_is_refused_without_opening_it(tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    _unblock_after(fifo, 8.0)
    t0 = time.monotonic()
    with pytest.raises(BadInputError, match=rf"{name}: is a FIFO \(named pipe\), not a regular "
                                            "file; refusing to read it"):
        read_info(fifo)
    assert time.monotonic() - t0 < 5


def test_the_header_length_error_does_not_echo_the_file(tmp_path):
    secret = b"hunter2!" + b"more secret text"
    path = tmp_path / "secret.safetensors"
    path.write_bytes(secret)
    with pytest.raises(BadInputError) as err:
        load_model(path)
    text = str(err.value)
    assert str(int.from_bytes(secret[:8], "little")) not in text
    assert str(int.from_bytes(secret[:4], "little")) not in text
    assert "hunter2" not in text


def test_a_deeply_nested_header_is_bad_input(tmp_path):
    header = ("[" * 100_000 + "]" * 100_000).encode()
    path = tmp_path / "deep.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(BadInputError, match="nested too deeply"):
        load_model(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_checkpoint_in_an_hf_folder_is_refused_by_name(tmp_path):
    folder = make_hf_folder(tmp_path / "m")
    for f in folder.glob("*.safetensors"):
        f.unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(BadInputError, match=r"pytorch_model.bin is a pickle checkpoint, which "
                                            "mono-quant does not load"):
        parse_model_source(f"hf:{folder}").load()


# --- numerics at the edge of float32 -------------------------------------------------------


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
def test_finite_weights_near_float32_max_are_quantized(scheme):
    w = torch.tensor([[3e38, -3e38, 1.0, 0.0], [-3e38, 2.0, 3e38, 5.0]])
    q = quantize_weight_int8(w, scheme, "per_tensor")
    assert torch.isfinite(q.scale).all()
    # the extremes come back as themselves, within one quantization step
    step = float(q.scale.max())
    assert abs(float(q.dequantize()[0, 0]) - 3e38) <= step
    assert abs(float(q.dequantize()[0, 1]) + 3e38) <= step


def test_infinite_weights_are_still_refused():
    with pytest.raises(BadInputError, match="NaN or infinite"):
        quantize_weight_int8(torch.tensor([[float("inf"), 1.0]]), "asymmetric", "per_tensor")


# --- a full disk is transient on every format ---------------------------------------------


class _FullDisk:
    """A file whose writes fail with ENOSPC after ``room`` bytes. Mocked: no filesystem can be
    filled safely on a shared test machine; it sits where the real write happens (the file
    atomic_file opens), so every writer above it is exercised."""

    def __init__(self, f, room: int) -> None:
        self._f, self._room = f, room

    def write(self, data) -> int:
        self._room -= len(data)
        if self._room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        self._f.__enter__()
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


@pytest.mark.parametrize(("name", "fmt"), [("a.safetensors", None), ("a.pt", None),
                                           ("ct", "compressed-tensors")],
                         ids=["safetensors", "pt", "compressed-tensors"])
def test_a_full_disk_is_a_transient_storage_error(tmp_path, monkeypatch, name, fmt):
    from mono_quant.io import _atomic

    real = os.fdopen
    monkeypatch.setattr(_atomic.os, "fdopen", lambda fd, *a, **k: _FullDisk(real(fd, *a, **k),
                                                                             room=600))
    qmodel, info = _tiny_quantized()
    with pytest.raises(StorageError, match="(?i)no space left on device") as err:
        save_model(qmodel, tmp_path / name, info, format=fmt)
    assert classify(err.value) == (ErrorKind.TRANSIENT, True)
    assert list(tmp_path.iterdir()) == []  # nothing left behind
