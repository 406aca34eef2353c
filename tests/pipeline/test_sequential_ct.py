"""The sequential pipeline writes compressed-tensors folders (one file and sharded), made
block by block from its parts: the same tensors as the in-memory pipeline's folder, and
transformers loads both to the same logits.

Reference: the in-memory pipeline's ``save_model`` (``interop.to_compressed`` on the whole
state dict), which tests/pipeline/test_matrix.py already checks against transformers and
the float model. Weight-only (``pack-quantized``) and dynamic W8A8 (``int-quantized``) give
identical integers in both pipelines (tests/pipeline/test_sequential.py), so every tensor,
the ``quantization_config`` and the loaded model's logits must be equal.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from mono_quant.errors import BadConfigError
from mono_quant.io.formats import load_model, read_info
from mono_quant.pipeline import JobSpec, run_pipeline
from tests.pipeline.test_sequential import make_folder, spec_of

transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from tests.io.hf_fixture import CALIBRATION_TEXT

    root = tmp_path_factory.mktemp("seqct")
    (root / "cal.txt").write_text(CALIBRATION_TEXT * 2)
    return root, make_folder(root, "llama-untied")


def _run(llama, tmp_path: Path, pipeline: str, mode: str, shard: str | None):
    root, folder = llama
    spec = dataclasses.replace(spec_of(folder, root / "cal.txt", pipeline, mode=mode),
                               format="compressed-tensors", max_shard_size=shard)
    return run_pipeline(spec, tmp_path / f"{pipeline}-{shard}")


def _stored(path: Path) -> dict[str, torch.Tensor]:
    """The folder's tensors as stored (compressed-tensors names), every shard."""
    from safetensors.torch import load_file

    return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}


def _logits(path: Path) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


@pytest.mark.parametrize("shard", [None, "16KB"], ids=["one-file", "sharded"])
@pytest.mark.parametrize("mode", ["weight_only", "dynamic"])
@pytest.mark.slow
def test_compressed_tensors_equal_to_in_memory_and_load_in_transformers(llama, tmp_path,
                                                                        mode, shard):
    mem = _run(llama, tmp_path, "in_memory", mode, shard)
    seq = _run(llama, tmp_path, "sequential", mode, shard)
    assert seq.info.metrics["sequential"]["blocks"] == 2
    a, b = _stored(mem.path), _stored(seq.path)
    assert sorted(a) == sorted(b)
    if mode == "weight_only":
        assert any(k.endswith(".weight_packed") for k in b)  # pack-quantized, as in memory
    assert [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])] == []
    ca = json.loads((mem.path / "config.json").read_text())
    cb = json.loads((seq.path / "config.json").read_text())
    assert cb["quantization_config"] == ca["quantization_config"]
    assert cb["use_cache"] == ca["use_cache"] and cb["architectures"] == ca["architectures"]
    # tokenizer, card, model file or index (shards fill in another tensor order: block by
    # block, then the tail, so their number may differ)
    others = [{p.name for p in run.path.iterdir() if not p.name.startswith("model-")}
              for run in (mem, seq)]
    assert others[0] == others[1]
    if shard:
        index = json.loads((seq.path / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) >= 2
        assert sorted(index["weight_map"]) == sorted(b)
    assert read_info(seq.path).selected_layers == mem.info.selected_layers
    assert seq.info.metrics["serveable_by"] == mem.info.metrics["serveable_by"]
    assert seq.info.metrics["reload_check"].startswith("ok: ")
    # mono-quant reads it back in its own layout, equal to the in-memory folder's
    ours_a, ours_b = load_model(mem.path), load_model(seq.path)
    assert [k for k in ours_a if not torch.equal(ours_a[k], ours_b[k])] == []
    assert torch.equal(_logits(seq.path), _logits(mem.path))
    assert not Path(f"{seq.path}.work").exists()


@pytest.mark.slow
def test_static_compressed_tensors_loads_in_transformers(llama, tmp_path):
    """Static scales differ from in memory by the measured bound (test_sequential.py), so
    here: block 0 equal, the folder loads, and its logits are close to the in-memory one's."""
    mem = _run(llama, tmp_path, "in_memory", "static", None)
    seq = _run(llama, tmp_path, "sequential", "static", None)
    a, b = _stored(mem.path), _stored(seq.path)
    assert sorted(a) == sorted(b)
    assert [k for k in a if ".layers.0." in k and not torch.equal(a[k], b[k])] == []
    la, lb = _logits(mem.path), _logits(seq.path)
    cos = torch.nn.functional.cosine_similarity(la.flatten(), lb.flatten(), dim=0)
    assert cos > 0.999


def test_gpt2_conv1d_is_refused_before_any_block(tmp_path):
    """GPT-2's Conv1D layers have no compressed-tensors form: refused from the skeleton,
    before a block is quantized (no work folder, no artifact)."""
    folder = make_folder(tmp_path, "gpt2")
    spec = JobSpec(spec_of(folder, tmp_path, "sequential", mode="weight_only").model,
                   format="compressed-tensors", pipeline="sequential")
    with pytest.raises(BadConfigError, match=r"cannot hold layer 'transformer\.h\.0\.attn\."
                                             r"c_attn' \(Conv1D\)"):
        run_pipeline(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()
