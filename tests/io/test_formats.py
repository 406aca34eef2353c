"""Round trips, exact header bytes, format detection and atomic writes of artifacts."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open

from mono_quant import (
    BadConfigError,
    BadInputError,
    QuantConfig,
    QuantizationInfo,
    demo_models,
    load_model,
    load_quantized,
    quantize_model,
    read_info,
    save_model,
)
from mono_quant.io import FORMATS, INFO_KEY, _build_metadata, detect_format

EXT = {"safetensors": "m.safetensors", "pt": "m.pt", "compressed-tensors": "m-folder"}
FORMAT_IDS = ["safetensors", "pt", "ct"]
SCHEMES = ["symmetric", "asymmetric"]
GRANULARITIES = [("per_tensor", None), ("per_channel", None), ("per_group", 32)]


def _mlp():
    return demo_models.mlp(in_features=64, hidden=96, out_features=16)


def _quantized(config, model_fn=_mlp, data=None):
    data = data if data is not None else demo_models.vector_batches(n=2, batch=4, features=64)
    qmodel, info = quantize_model(model_fn(), config, data, progress=False)
    return qmodel, info, data


def _assert_round_trip(qmodel, info, data, path, model_fn):
    loaded = load_model(path)
    expected = qmodel.state_dict()
    assert set(loaded) == set(expected)
    for name, t in expected.items():
        assert loaded[name].dtype == t.dtype, name
        assert torch.equal(loaded[name], t), name
    assert read_info(path) == info
    again = load_quantized(path, model_fn())
    for x in data:
        assert torch.equal(again(x), qmodel(x))


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(("granularity", "group_size"), GRANULARITIES,
                         ids=[g for g, _ in GRANULARITIES])
def test_round_trip_weight_only(tmp_path, fmt, scheme, granularity, group_size):
    config = QuantConfig(scheme=scheme, granularity=granularity, group_size=group_size)
    qmodel, info, data = _quantized(config)
    path = save_model(qmodel, tmp_path / EXT[fmt], info, format=fmt)
    assert path == tmp_path / EXT[fmt]
    assert path.is_dir() == (fmt == "compressed-tensors")
    _assert_round_trip(qmodel, info, data, path, _mlp)


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize(("scheme", "act"), [("symmetric", "asymmetric"),
                                             ("asymmetric", "symmetric")],
                         ids=["w-sym-a-asym", "w-asym-a-sym"])
def test_round_trip_static(tmp_path, fmt, scheme, act):
    config = QuantConfig(scheme=scheme, mode="static", activation_scheme=act)
    qmodel, info, data = _quantized(config)
    path = save_model(qmodel, tmp_path / EXT[fmt], info, format=fmt)
    _assert_round_trip(qmodel, info, data, path, _mlp)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_round_trip_conv(tmp_path, fmt):
    data = demo_models.image_batches(n=1, batch=2)
    qmodel, info, _ = _quantized(QuantConfig(mode="static"), demo_models.cnn, data)
    path = save_model(qmodel, tmp_path / EXT[fmt], info)
    _assert_round_trip(qmodel, info, data, path, demo_models.cnn)


def test_compressed_tensors_refuses_conv(tmp_path):
    qmodel, info, _ = _quantized(QuantConfig(), demo_models.cnn,
                                 demo_models.image_batches(n=1, batch=2))
    with pytest.raises(BadConfigError, match=r"Linear layers only; layer '0' has a 4-D weight"):
        save_model(qmodel, tmp_path / "cnn", info, format="compressed-tensors")
    assert list(tmp_path.iterdir()) == []


def test_plain_state_dict_round_trip(tmp_path):
    model = _mlp()
    for name in ("w.safetensors", "w.pth"):
        path = save_model(model, tmp_path / name)
        loaded = load_model(path)
        assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
        with pytest.raises(BadInputError, match=f"{path}: no mono-quant metadata"):
            read_info(path)
        with pytest.raises(BadInputError, match="load_quantized needs an artifact written with"):
            load_quantized(path, _mlp())


def test_header_bytes_are_exact_strings(tmp_path):
    info = QuantizationInfo(QuantConfig(), metrics={"sqnr": float("inf"), "note": 'a "q"'})
    tensors = {"b": torch.tensor([1.0, 2.0]), "a": torch.tensor([3, 4], dtype=torch.int8)}
    path = save_model(tensors, tmp_path / "x.safetensors", info)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    # built independently: compact JSON, metadata keys sorted, F32 before I8, spaces to 8
    expected = (
        '{"__metadata__":{"format":"pt","mono_quant.info":' + json.dumps(info.to_json())
        + '},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
        '"a":{"dtype":"I8","shape":[2],"data_offsets":[8,10]}}'
    ).encode()
    # padded with spaces to the length the header has with every metric at its widest
    widest = dict(info.to_dict(), metrics={"sqnr": -2.2250738585072014e-308, "note": 'a "q"',
                                           "warnings": ["w" * 320] * 2})
    bound = len(expected) - len(json.dumps(info.to_json())) + len(
        json.dumps(json.dumps(widest, sort_keys=True)))
    expected += b" " * (bound + -bound % 8 - len(expected))
    assert raw[8 : 8 + n] == expected
    assert raw[8 + n :] == torch.tensor([1.0, 2.0]).numpy().tobytes() + bytes([3, 4])
    meta = json.loads(raw[8 : 8 + n])["__metadata__"]
    assert all(isinstance(v, str) for v in meta.values())
    assert QuantizationInfo.from_json(meta[INFO_KEY]) == info


def test_header_length_does_not_depend_on_the_metrics_values(tmp_path):
    """What lets the streamed writer put the data at its final offsets before it knows the
    metrics: the header is padded to a length fixed by the metric names, not their values."""
    tensors = {"w": torch.ones(4, dtype=torch.int8)}
    sizes, readers = set(), []
    for i, metrics in enumerate([
        {"sqnr": 1.0, "layers": 2, "per_layer": {"a": 3.5}},
        {"sqnr": -1.2345678901234567e-300, "layers": 10**15, "per_layer": {"a": 1 / 3},
         "warnings": ["low compression: 1.00x (< 2.0x); 1 of 1000 layers quantized"]},
    ]):
        info = QuantizationInfo(QuantConfig(), metrics=metrics)
        path = save_model(tensors, tmp_path / f"{i}.safetensors", info)
        sizes.add(path.stat().st_size)
        raw = path.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        json_end = len(raw[8 : 8 + n].rstrip(b" "))
        assert n - json_end > 100  # trailing spaces (0x20): the format allows them
        assert read_info(path) == info
        with safe_open(path, "pt") as f:  # the reference reader accepts the padding
            readers.append((f.metadata()[INFO_KEY], torch.equal(f.get_tensor("w"), tensors["w"])))
        from transformers.modeling_utils import load_state_dict  # and transformers' loader

        assert torch.equal(load_state_dict(str(path))["w"], tensors["w"])
    assert len(sizes) == 1
    assert [ok for _, ok in readers] == [True, True]


def test_build_metadata_is_string_to_string():
    info = QuantizationInfo(QuantConfig(granularity="per_group", group_size=64))
    meta = _build_metadata(info, {"layers": ["a", "b"], "ratio": 3.5, "name": "x"})
    assert meta == {
        "format": "pt", INFO_KEY: info.to_json(), "layers": '["a", "b"]', "ratio": "3.5",
        "name": "x",
    }
    assert _build_metadata(None) == {"format": "pt"}
    with pytest.raises(ValueError, match="Out of range float values"):
        _build_metadata(None, {"bad": float("nan")})


@pytest.mark.parametrize(
    ("name", "fmt", "expected"),
    [
        ("a.safetensors", None, "safetensors"),
        ("a.SAFETENSORS", None, "safetensors"),
        ("a.pt", None, "pt"),
        ("a.pth", None, "pt"),
        ("a.pth", "pt", "pt"),
        ("folder", "compressed-tensors", "compressed-tensors"),
    ],
    ids=["safetensors", "upper-case", "pt", "pth", "pth-explicit", "folder"],
)
def test_format_detection(tmp_path, name, fmt, expected):
    assert detect_format(tmp_path / name, fmt) == expected


@pytest.mark.parametrize(
    ("name", "fmt", "message"),
    [
        ("a.bin", None, r"extension \.bin; accepted: \.safetensors, \.pt, \.pth"),
        ("a", None, r"extension \(none\); accepted: \.safetensors, \.pt, \.pth"),
        ("a.pt", "safetensors", r"extension \.pt does not match format 'safetensors'"),
        ("a.safetensors", "compressed-tensors", "is a folder; give a path without the"),
        ("a.onnx", "onnx", "format 'onnx': expected one of safetensors, pt, compressed-tensors"),
    ],
    ids=["bin", "no-extension", "mismatch", "ct-with-extension", "unknown-format"],
)
def test_format_detection_errors(tmp_path, name, fmt, message):
    with pytest.raises(BadInputError, match=message):
        detect_format(tmp_path / name, fmt)
    with pytest.raises(BadInputError, match=message):
        save_model(_mlp(), tmp_path / name, format=fmt)
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_compressed_tensors(tmp_path):
    assert detect_format(tmp_path) == "compressed-tensors"
    with pytest.raises(BadInputError, match="not a compressed-tensors artifact"):
        load_model(tmp_path)


def test_save_refuses_tensors_that_disagree_with_info(tmp_path):
    qmodel, info, _ = _quantized(QuantConfig())
    tensors = qmodel.state_dict()
    del tensors["2.weight_scale"]
    with pytest.raises(BadInputError) as err:
        save_model(tensors, tmp_path / "x.safetensors", info)
    assert str(err.value).startswith(
        f"save_model({tmp_path / 'x.safetensors'}): tensor '2.weight_scale' is missing")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_failed_write_leaves_nothing_and_keeps_the_old_artifact(tmp_path, fmt):
    qmodel, info, _ = _quantized(QuantConfig())
    target = save_model(qmodel, tmp_path / EXT[fmt], info, format=fmt)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    old = load_model(target)
    tensors = dict(qmodel.state_dict())
    # complex128 has no safetensors dtype: the writer fails after its temporary exists
    tensors["extra"] = torch.zeros(2, dtype=torch.complex128)
    if fmt == "pt":
        tensors["extra"] = torch.zeros(2)
        tensors["0.weight_scale"] = torch.zeros(1)  # wrong shape: refused before writing
    with pytest.raises(BadInputError):
        save_model(tensors, target, info, format=fmt)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no temporaries left
    assert all(torch.equal(load_model(target)[k], v) for k, v in old.items())


def test_saved_files_are_world_readable(tmp_path):
    qmodel, info, _ = _quantized(QuantConfig())
    for fmt in FORMATS:
        path = save_model(qmodel, tmp_path / EXT[fmt], info, format=fmt)
        files = [path] if path.is_file() else [path, *path.iterdir()]
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) & 0o044 == 0o044, f


def test_overwrite_replaces_the_folder(tmp_path):
    qmodel, info, _ = _quantized(QuantConfig())
    path = save_model(qmodel, tmp_path / "ct", info, format="compressed-tensors")
    qmodel2, info2, _ = _quantized(QuantConfig(scheme="asymmetric"))
    save_model(qmodel2, path, info2, format="compressed-tensors")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert read_info(path) == info2
    assert [p.name for p in tmp_path.iterdir()] == ["ct"]


def test_overwrite_keeps_a_folder_holding_files_it_did_not_write(tmp_path):
    qmodel, info, _ = _quantized(QuantConfig())
    path = save_model(qmodel, tmp_path / "ct", info, format="compressed-tensors")
    (path / "notes.txt").write_text("mine")
    qmodel2, info2, _ = _quantized(QuantConfig(scheme="asymmetric"))
    with pytest.raises(BadInputError, match=r"ct: exists and is not a compressed-tensors "
                                            r"artifact written by mono-quant \(it holds notes.txt"):
        save_model(qmodel2, path, info2, format="compressed-tensors")
    assert (path / "notes.txt").read_text() == "mine"
    assert read_info(path) == info


_WRITER = """
import sys, torch
from mono_quant import save_model
print("ready", flush=True)
save_model({f"t{i}": torch.ones(32 << 20) for i in range(12)}, sys.argv[1])
"""


def test_a_killed_writer_leaves_no_partial_file(tmp_path):
    target = tmp_path / "big.safetensors"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".big.safetensors.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".big.safetensors.*.tmp")), "the writer never started writing"
    assert not target.exists()


def test_round_trip_from_and_to_the_device(tmp_path, device):
    data = [x.to(device) for x in demo_models.vector_batches(n=2, batch=4, features=64)]
    qmodel, info = quantize_model(_mlp().to(device), QuantConfig(mode="static"), data,
                                  progress=False)
    path = save_model(qmodel, tmp_path / "m.safetensors", info)
    loaded = load_model(path)
    for name, t in qmodel.state_dict().items():
        assert loaded[name].device.type == "cpu" and torch.equal(loaded[name], t.cpu()), name
    again = load_quantized(path, _mlp().to(device))
    assert all(t.device.type == device for t in again.state_dict().values())
    for x in data:
        assert torch.equal(again(x), qmodel(x))
