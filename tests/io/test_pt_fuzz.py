"""Damaged ``.pt`` files: every cut and byte flip fails as a BadInputError naming the file.

A property test over both torch.save layouts (the zip archive and the legacy stream written
with ``_use_new_zipfile_serialization=False``): truncate at every Nth byte and flip seeded
random bytes; ``load_model`` and ``read_info`` may succeed (a flip in tensor data changes only
numbers) but must never raise anything else, and must never call a damaged file "refused".
"""

from __future__ import annotations

import random

import pytest
import torch

from mono_quant import (
    BadInputError,
    QuantConfig,
    demo_models,
    load_model,
    quantize_model,
    read_info,
)
from mono_quant.io.formats import _build_metadata

LAYOUTS = {"zip": True, "legacy": False}
STEP = 5  # truncate at every 5th byte (the files are 4-7 KB)
FLIPS = 150  # seeded random corruptions per layout


def _pt_file(tmp_path, zip_layout: bool):
    torch.manual_seed(0)
    qmodel, info = quantize_model(demo_models.mlp(16, 24, 4), QuantConfig(), progress=False)
    payload = {"state_dict": dict(qmodel.state_dict()), "metadata": _build_metadata(info)}
    path = tmp_path / "src.pt"
    torch.save(payload, path, _use_new_zipfile_serialization=zip_layout)
    return path.read_bytes()


def _damaged(raw: bytes, seed: int):
    for cut in range(0, len(raw), STEP):
        yield f"cut at {cut}", raw[:cut]
    rng = random.Random(seed)
    for k in range(FLIPS):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        yield f"flip #{k}", bytes(data)
    yield "garbage", bytes(rng.randrange(256) for _ in range(len(raw)))


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
def test_damaged_pt_only_raises_bad_input_naming_the_file(tmp_path, layout):
    raw = _pt_file(tmp_path, LAYOUTS[layout])
    path = tmp_path / "damaged.pt"
    failures = 0
    for case, data in _damaged(raw, seed=1234):
        path.write_bytes(data)
        for call in (load_model, read_info):
            try:
                call(path)
            except BadInputError as e:
                failures += 1
                text = str(e)
                assert str(path) in text, (case, call.__name__, text)
                # a damaged file is unreadable; only a refused global may say "refused", and
                # then the advice must never be "load it with weights_only=False"
                if "refused" in text:
                    assert "(it calls " in text and "use .safetensors" in text, (case, text)
                else:
                    assert text.startswith(f"{path}: "), (case, text)
                assert "weights_only=False" not in text, (case, text)
            except Exception as e:  # the property under test: nothing else escapes
                pytest.fail(f"{layout} {case}: {call.__name__} raised "
                            f"{type(e).__name__}: {e}")
    assert failures > len(raw) // STEP  # the cuts at least do fail (all but the full file)


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
def test_truncated_pt_message(tmp_path, layout):
    raw = _pt_file(tmp_path, LAYOUTS[layout])
    path = tmp_path / "cut.pt"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BadInputError) as err:
        load_model(path)
    assert str(err.value).startswith(f"{path}: not a readable .pt file (truncated or corrupt: ")
    assert err.value.__cause__ is not None


def test_garbage_is_not_called_refused(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(bytes(random.Random(7).randrange(256) for _ in range(5000)))
    with pytest.raises(BadInputError) as err:
        load_model(path)
    assert str(err.value).startswith(f"{path}: not a readable .pt file ("), str(err.value)
    assert "refused" not in str(err.value)
