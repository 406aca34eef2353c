"""The sequential pipeline against the in-memory one, on tiny Llama, OPT and BERT ``hf:``
folders built in code (2 blocks, 4 calibration batches of 4 texts x 16 tokens).

What is equal and what is bounded:

* weight-only and dynamic W8A8: every tensor equal (same kernel, same float weights);
* static W8A8 and SmoothQuant: block 0 equal in full (it sees the very same inputs, which
  checks the input capture); later blocks and the head see activations that went through
  *quantized* blocks (in memory: float ones), so activation scales (static) and smoothing
  scales (SmoothQuant, hence weight scales) differ. The bounds below are the worst relative
  differences measured (2026-11-30, torch 2.13 CPU, in this test and in a plain script: the
  two differ, tiny random models amplify float differences of the kernels' paths) with a
  1.5x margin. Random OPT is the most sensitive (its activations reach the int8 range's
  edges).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from mono_quant.errors import BadConfigError
from mono_quant.io.formats import load_model, read_info
from mono_quant.pipeline import JobSpec, parse_calibration_source, parse_model_source, run_pipeline
from mono_quant.quant.qconfig import QuantConfig
from tests.io.hf_fixture import CALIBRATION_TEXT, make_tokenizer
from tests.pipeline.archs import ARCHS

ARCH = {a.name: a for a in ARCHS}
NAMES = ("llama-untied", "opt", "bert")

#: measured worst relative difference of a later block's input_scale (static), x1.5
INPUT_SCALE_BOUND = {"llama-untied": 0.0028 * 1.5, "opt": 0.174 * 1.5, "bert": 0.0038 * 1.5}
#: measured worst relative difference of a later weight_scale with SmoothQuant 0.5, x1.5,
#: among the layers whose mapping took the same strength in both runs. Since SmoothQuant also
#: smooths v_proj -> o_proj / out_proj (issue 11), those scales follow the value activations,
#: which sequential takes from the quantized blocks: the random OPT's differ most.
SMOOTH_SCALE_BOUND = {"llama-untied": 0.0087 * 1.5, "opt": 1.12 * 1.5, "bert": 0.0097 * 1.5}


def make_folder(root: Path, name: str, seed: int = 0, **config) -> Path:
    arch = ARCH[name]
    torch.manual_seed(seed)
    import transformers

    cfg = getattr(transformers, arch.config_class)(**{**arch.config, **config})
    model = getattr(transformers, arch.model_class)(cfg).eval()
    folder = root / name
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq")
    (root / "cal.txt").write_text(CALIBRATION_TEXT * 2)
    return root, {name: make_folder(root, name) for name in NAMES}


def spec_of(folder: Path, cal: Path, pipeline: str, **quant) -> JobSpec:
    return JobSpec(parse_model_source(f"hf:{folder}"), QuantConfig(**quant),
                   calibration=parse_calibration_source(f"text:{cal}?batch_size=4&max_length=16"),
                   pipeline=pipeline)


def both(folders, name: str, tmp_path: Path, **quant):
    root, paths = folders
    out = {}
    for pipeline in ("in_memory", "sequential"):
        spec = spec_of(paths[name], root / "cal.txt", pipeline, **quant)
        result = run_pipeline(spec, tmp_path / f"{pipeline}.safetensors")
        out[pipeline] = (load_model(result.path), result.info)
    return out


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / a.double().abs().max().clamp(min=1e-30))


@pytest.mark.parametrize("mode", ["weight_only", "dynamic"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_weight_only_and_dynamic_give_identical_tensors(folders, tmp_path, name, mode):
    runs = both(folders, name, tmp_path, mode=mode)
    (a, ia), (b, ib) = runs["in_memory"], runs["sequential"]
    assert sorted(a) == sorted(b)
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert unequal == []
    assert ia.selected_layers == ib.selected_layers
    assert ib.metrics["layer_weight_sqnr_db"] == pytest.approx(ia.metrics["layer_weight_sqnr_db"])
    assert ib.metrics["sequential"]["blocks"] == 2
    assert ib.metrics["compression_ratio"] == pytest.approx(ia.metrics["compression_ratio"],
                                                            rel=0.02)


def _block0(key: str) -> bool:
    return ".0." in key


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_static_equal_in_block_0_and_bounded_after(folders, tmp_path, name):
    runs = both(folders, name, tmp_path, mode="static")
    a, b = runs["in_memory"][0], runs["sequential"][0]
    assert sorted(a) == sorted(b)
    for k in a:
        if _block0(k) or not k.endswith(("input_scale", "input_zero_point")):
            assert torch.equal(a[k], b[k]), k  # weights never depend on activations here
    worst = max(relative(a[k], b[k]) for k in a if k.endswith("input_scale"))
    assert 0 < worst <= INPUT_SCALE_BOUND[name]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_smoothquant_equal_in_block_0_and_bounded_after(folders, tmp_path, name):
    runs = both(folders, name, tmp_path, mode="static", smoothquant=0.5)
    a, b = runs["in_memory"][0], runs["sequential"][0]
    for k in a:
        if _block0(k):
            assert torch.equal(a[k], b[k]), k
    ia = runs["in_memory"][1].metrics["smoothquant"]
    ib = runs["sequential"][1].metrics["smoothquant"]
    assert sorted(ib["strengths"]) == sorted(ia["strengths"])  # every mapping, both runs
    # each mapping's strength is searched on its block's inputs (smoothsearch): later blocks
    # see the quantized blocks' outputs, so a search may settle on another strength there;
    # where both runs chose the same one, the scales differ only as the inputs do
    same = [s for s in ia["strengths"] if ia["strengths"][s] == ib["strengths"][s]]
    assert all(ia["strengths"][s] == ib["strengths"][s] for s in ia["strengths"] if ".0." in s)
    layers = {f"{layer}.weight_scale" for s in same for layer in ia["smoothed"].get(s, [])}
    worst = max((relative(a[k], b[k]) for k in layers if k in a), default=0.0)
    assert worst <= SMOOTH_SCALE_BOUND[name]


@pytest.mark.slow
def test_gptq_block_0_equal(folders, tmp_path):
    runs = both(folders, "llama-untied", tmp_path, mode="weight_only", weight_algorithm="gptq")
    a, b = runs["in_memory"][0], runs["sequential"][0]
    for k in a:
        if _block0(k):
            assert torch.equal(a[k], b[k]), k
    assert runs["sequential"][1].metrics["gptq"]["layers_gptq"] > 0


@pytest.mark.slow
def test_artifact_info_and_peaks(folders, tmp_path):
    root, paths = folders
    spec = spec_of(paths["llama-untied"], root / "cal.txt", "sequential", mode="static")
    stages = []
    result = run_pipeline(spec, tmp_path / "q.safetensors",
                          on_stage=lambda s, **e: stages.append((s, e)))
    assert ("quantizing", {"pipeline": "sequential", "first_block": 0, "blocks": 2,
                           "resumed": False}) in stages
    assert [e["block"] for s, e in stages if s == "quantizing block"] == [1, 2]
    info = read_info(result.path)
    assert info.selected_layers == result.info.selected_layers
    assert result.info.metrics["peak_host_bytes"] > 0
    assert "peak_host_bytes" not in info.metrics  # the artifact's bytes do not depend on it
    assert result.info.metrics["reload_check"].startswith("ok: ")
    assert not (tmp_path / "q.safetensors.work").exists()  # only the artifact is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.safetensors"]


@pytest.mark.slow
def test_auto_picks_sequential_when_the_model_does_not_fit(folders, tmp_path, monkeypatch):
    from mono_quant.pipeline import choose

    root, paths = folders
    spec = spec_of(paths["opt"], root / "cal.txt", "auto", mode="dynamic")
    assert choose.choose_pipeline(spec) == "in_memory"  # a few hundred KiB fits
    monkeypatch.setattr(choose, "available_bytes", lambda device: 1 << 20)
    assert choose.choose_pipeline(spec) == "sequential"
    result = run_pipeline(spec, tmp_path / "q.safetensors")
    assert result.info.metrics["sequential"]["blocks"] == 2
    # a job that cannot run sequentially stays in memory, whatever the memory
    target = JobSpec(spec.model, QuantConfig(mode="dynamic", target={"output_cosine": 0.5}),
                     calibration=spec.calibration)
    assert choose.choose_pipeline(target) == "in_memory"


def test_sequential_refuses_what_it_cannot_do(folders):
    _, paths = folders
    with pytest.raises(BadConfigError, match=r"pipeline: sequential: the model must be an hf: "
                                             r"folder"):
        JobSpec(parse_model_source("factory:mono_quant.demo_models:mlp"), pipeline="sequential")
    with pytest.raises(BadConfigError, match="it writes the safetensors and "
                                             "compressed-tensors formats"):
        JobSpec(parse_model_source(f"hf:{paths['opt']}"), format="pt", pipeline="sequential")
    with pytest.raises(BadConfigError, match=r"pipeline='fast': expected one of auto, "
                                             r"in_memory, sequential"):
        JobSpec(parse_model_source(f"hf:{paths['opt']}"), pipeline="fast")


@pytest.mark.slow
def test_serveability_and_nothing_selected(folders, tmp_path):
    root, paths = folders
    spec = spec_of(paths["llama-untied"], root / "cal.txt", "sequential", mode="dynamic")
    result = run_pipeline(spec, tmp_path / "q.safetensors")
    in_memory = run_pipeline(spec_of(paths["llama-untied"], root / "cal.txt", "in_memory",
                                     mode="dynamic"), tmp_path / "m.safetensors")
    for key in ("serveable_by", "serveable_reason"):
        assert result.info.metrics.get(key) == in_memory.info.metrics.get(key)
    nothing = spec_of(paths["llama-untied"], root / "cal.txt", "sequential", mode="dynamic",
                      exclude=["Linear"])
    with pytest.raises(BadConfigError, match="no layers selected: the model has 15 "):
        run_pipeline(nothing, tmp_path / "n.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "q.safetensors"]


def test_sequential_writes_shards_equal_to_its_single_file(folders, tmp_path):
    """With max_shard_size the sequential pipeline writes a sharded folder (standard index)
    holding exactly the tensors and info of its single-file artifact."""
    root, paths = folders
    single = run_pipeline(spec_of(paths["llama-untied"], root / "cal.txt", "sequential",
                                  mode="static"), tmp_path / "one.safetensors")
    spec = dataclasses.replace(
        spec_of(paths["llama-untied"], root / "cal.txt", "sequential", mode="static"),
        max_shard_size="64KB")
    sharded = run_pipeline(spec, tmp_path / "sharded.safetensors")
    assert sharded.path.is_dir()
    shards = sorted(p.name for p in sharded.path.glob("model-*.safetensors"))
    assert len(shards) >= 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((sharded.path / "model.safetensors.index.json").read_text())
    a, b = load_model(single.path), load_model(sharded.path)
    assert sorted(index["weight_map"]) == sorted(a) == sorted(b)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert read_info(sharded.path).selected_layers == single.info.selected_layers
    assert sharded.info.metrics["reload_check"].startswith(f"ok: {len(a)} tensors")
