"""Corrupt, foreign and malicious inputs fail with errors naming the file and the problem."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
import torch

from mono_quant import (
    BadInputError,
    QuantConfig,
    demo_models,
    load_model,
    load_quantized,
    quantize_model,
    read_info,
    save_model,
)
from mono_quant.io import INFO_KEY


def _artifact(tmp_path, name="q.safetensors", fmt=None, config=None):
    qmodel, info = quantize_model(demo_models.mlp(64, 96, 16), config or QuantConfig(),
                                  progress=False)
    return save_model(qmodel, tmp_path / name, info, format=fmt), qmodel, info


def _header(path):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return raw, n, json.loads(raw[8 : 8 + n])


def _rewrite(path, header: dict, data: bytes):
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def _expect(path, message, call=load_model):
    with pytest.raises(BadInputError) as err:
        call(path)
    text = str(err.value)
    assert str(path) in text, text
    # not in the path: pytest names tmp_path after the test ("..._is_refused0/evil.pt")
    assert message in text.replace(str(path), "<path>"), text
    return text


CASES = {
    "empty-file": (lambda raw, n, h, p: p.write_bytes(b""),
                   "truncated safetensors file: 0 bytes, shorter than the 8-byte header length"),
    "cut-in-header": (lambda raw, n, h, p: p.write_bytes(raw[: 8 + n // 2]),
                      "truncated safetensors file: the header declares"),
    "cut-in-data": (lambda raw, n, h, p: p.write_bytes(raw[:-100]),
                    "truncated safetensors file: the header describes"),
    "garbage": (lambda raw, n, h, p: p.write_bytes(bytes(range(256)) * 4),
                "not a safetensors file (garbage header): the header length field is above"),
    "not-json": (lambda raw, n, h, p: p.write_bytes((16).to_bytes(8, "little") + b"{not json}" * 3),
                 "not a safetensors file (garbage header)"),
    "trailing-bytes": (lambda raw, n, h, p: p.write_bytes(raw + b"\0" * 8),
                       "header/data size mismatch: the header describes"),
    "shape-vs-offsets": (
        lambda raw, n, h, p: _rewrite(p, {**h, "0.bias": {**h["0.bias"], "shape": [97]}},
                                      raw[8 + n :]),
        "header/data size mismatch: tensor '0.bias' (F32 [97]) needs 388 bytes but its "
        "data_offsets span 384"),
    "overlap": (
        lambda raw, n, h, p: _rewrite(
            p, {**h, "2.bias": {**h["2.bias"], "data_offsets": [0, 384]}}, raw[8 + n :]),
        "tensor data must be contiguous without overlaps"),
    "unknown-dtype": (
        lambda raw, n, h, p: _rewrite(p, {**h, "0.bias": {**h["0.bias"], "dtype": "F13"}},
                                      raw[8 + n :]),
        "tensor '0.bias': unknown dtype 'F13'"),
    "metadata-not-strings": (
        lambda raw, n, h, p: _rewrite(p, {**h, "__metadata__": {"format": 1}}, raw[8 + n :]),
        "'__metadata__' must map strings to strings"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_corrupt_safetensors(tmp_path, case):
    path, _, _ = _artifact(tmp_path)
    corrupt, message = CASES[case]
    raw, n, header = _header(path)
    corrupt(raw, n, header, path)
    _expect(path, message)
    _expect(path, message, read_info)


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.safetensors", "no such file")
    _expect(tmp_path / "nope.pt", "no such file")


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"format": "pt"}, "no mono-quant metadata: no 'mono_quant.info' entry"),
        ({INFO_KEY: json.dumps({"format": "other-tool", "version": 1})},
         "not mono-quant metadata (expected a JSON object with format='mono-quant')"),
        ({INFO_KEY: "{oops"}, "metadata is not valid JSON"),
    ],
    ids=["no-info", "foreign-info", "info-not-json"],
)
def test_metadata_that_is_not_ours(tmp_path, metadata, message):
    path, _, _ = _artifact(tmp_path)
    raw, n, header = _header(path)
    _rewrite(path, {**header, "__metadata__": metadata}, raw[8 + n :])
    _expect(path, message, read_info)
    if INFO_KEY in metadata:
        _expect(path, message)  # load_model validates quantized tensors against the info


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
@pytest.mark.parametrize("tensor", ["2.weight_scale", "2.weight_zero_point"])
def test_tensor_missing_its_scale(tmp_path, fmt, tensor):
    _, qmodel, info = _artifact(tmp_path, f"q.{fmt}")
    tensors = dict(qmodel.state_dict())
    del tensors[tensor]
    broken = save_model(tensors, tmp_path / f"broken.{fmt}")  # written without info...
    if fmt == "safetensors":  # ...then given the original info back, as a corrupt file would
        raw, n, header = _header(broken)
        _rewrite(broken, {**header, "__metadata__": {"format": "pt", INFO_KEY: info.to_json()}},
                 raw[8 + n :])
    else:
        torch.save({"state_dict": tensors, "metadata": {INFO_KEY: info.to_json()}}, broken)
    text = _expect(broken, f"tensor {tensor!r} is missing: quantized layer '2' needs")
    assert text == _expect(broken, "is missing", lambda p: load_quantized(p, demo_models.mlp()))


def test_compressed_tensors_missing_scale(tmp_path):
    path, _, _ = _artifact(tmp_path, "ct", "compressed-tensors")
    from safetensors.torch import load_file, save_file

    model_file = path / "model.safetensors"
    from safetensors import safe_open

    with safe_open(model_file, "pt") as f:
        metadata = f.metadata()
    tensors = load_file(model_file)
    del tensors["4.weight_scale"]
    save_file(tensors, model_file, metadata=metadata)
    _expect(path, "tensor '4.weight_scale' is missing: quantized layer '4' needs its scale")


def test_wrong_scale_shape(tmp_path):
    _, qmodel, info = _artifact(tmp_path)
    tensors = dict(qmodel.state_dict())
    tensors["0.weight_scale"] = torch.ones(3, 1)
    torch.save({"state_dict": tensors, "metadata": {INFO_KEY: info.to_json()}},
               tmp_path / "bad.pt")
    _expect(tmp_path / "bad.pt", "tensor '0.weight_scale' has shape [3, 1], expected [96, 1]")


def test_architecture_mismatch(tmp_path):
    path, _, _ = _artifact(tmp_path)
    _expect(path, "the artifact quantizes layer '2' but the model has no such layer",
            lambda p: load_quantized(p, torch.nn.Sequential(torch.nn.Linear(64, 96))))
    _expect(path, "tensor '0.weight' has shape [96, 64], the model expects [128, 64]",
            lambda p: load_quantized(p, _wider()))


def _wider():
    m = demo_models.mlp(64, 96, 16)
    m[0] = torch.nn.Linear(64, 128)
    return m


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable .pt file (truncated or corrupt: EOFError: the file ends early)"),
        (b"PK\x03\x04 this is not really a zip",
         "not a readable .pt file (truncated or corrupt: RuntimeError: PytorchStreamReader "
         "failed reading zip archive: failed finding central directory)"),
        (b"\x80\x02garbage", "not a readable .pt file (corrupt, or not written by torch.save: "
                              "Unsupported operand 103)"),
    ],
    ids=["empty", "bad-zip", "garbage-pickle"],
)
def test_corrupt_pt(tmp_path, content, message):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    _expect(path, message)


def test_truncated_pt(tmp_path):
    path, _, _ = _artifact(tmp_path, "q.pt")
    path.write_bytes(path.read_bytes()[:-200])
    _expect(path, "not a readable .pt file (truncated or corrupt: ")


def test_pt_that_is_not_a_state_dict(tmp_path):
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    _expect(tmp_path / "list.pt", "expected a state dict (str -> tensor)")


class _Payload:
    """Unpickling this calls open(marker, 'w'): code execution, which must never happen."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pt_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "x": _Payload(marker)}, path)
    text = _expect(path, "<path>: refused: this .pt file needs arbitrary pickle code to load")
    assert "(it calls io.open)" in text
    assert "use .safetensors" in text and "weights_only=True" in text
    assert text == _expect(path, "<path>: refused", read_info)
    assert text == _expect(path, "<path>: refused", lambda p: load_quantized(p, demo_models.mlp()))
    assert not marker.exists()
    # the payload is live: an unsafe load (in another process) does run it
    code = "import sys, torch; torch.load(sys.argv[1], weights_only=False)"
    subprocess.run([sys.executable, "-c", code, str(path)], check=False, capture_output=True)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    ("protocol", "message"),
    [
        # protocol 2 (torch.save's) parses up to the global, which is refused
        (2, "<path>: refused: this .pt file needs arbitrary pickle code to load (it calls "
            "io.open)"),
        # protocols 4 and 5 start with a FRAME opcode the weights-only unpickler cannot parse
        (4, "<path>: not a readable .pt file (a protocol-4 pickle, not torch.save output: "
            "Unsupported operand 149)"),
        (5, "<path>: not a readable .pt file (a protocol-5 pickle, not torch.save output: "
            "Unsupported operand 149)"),
    ],
    ids=["protocol-2", "protocol-4", "protocol-5"],
)
def test_plain_pickle_never_runs(tmp_path, protocol, message):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": _Payload(marker)}, protocol=protocol))
    _expect(path, message)
    assert not marker.exists()
