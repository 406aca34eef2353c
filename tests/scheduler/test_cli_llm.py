"""``mono-quant quantize`` with the LLM-grade int8 options, in subprocesses."""

from __future__ import annotations

import json

import pytest

from mono_quant import read_info
from tests.io.hf_fixture import CALIBRATION_TEXT, make_hf_folder
from tests.scheduler.test_cli_quantize import MLP, VECTORS, _report, cli


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    pytest.importorskip("transformers", reason="hf: sources need the 'hf' extra")
    folder = make_hf_folder(tmp_path_factory.mktemp("hf") / "tiny")
    (folder.parent / "calib.txt").write_text(CALIBRATION_TEXT)
    (folder.parent / "eval.txt").write_text(CALIBRATION_TEXT * 3)
    return folder


@pytest.mark.slow
def test_dynamic_smoothquant_gptq_with_perplexity(tmp_path, hf_folder):
    out = tmp_path / "tiny-w8a8-dyn"
    res = cli("quantize", f"hf:{hf_folder}", "-o", out, "--format", "compressed-tensors",
              "--mode", "dynamic", "--smoothquant", "0.8", "--weight-algorithm", "gptq",
              "--calibration", f"text:{hf_folder.parent / 'calib.txt'}", "--exclude", "lm_head",
              "--evaluation", f"text:{hf_folder.parent / 'eval.txt'}?context=64", "--quiet")
    assert res.returncode == 0, res.stderr
    report = _report(res.stdout)
    assert report["config"] == ("symmetric per_channel dynamic (weights: minmax, gptq, "
                                "smoothquant 0.8)")
    info = read_info(out)
    m = info.metrics
    assert m["perplexity_context"] == 64 and m["perplexity_tokens"] == 3 * len(CALIBRATION_TEXT)
    assert m["perplexity_increase"] == pytest.approx(m["perplexity_quant"] - m["perplexity_fp"])
    assert report["perplexity"] == (f"{m['perplexity_fp']:.4f} float -> "
                                    f"{m['perplexity_quant']:.4f} int8 "
                                    f"(+{m['perplexity_increase']:.4f})")
    assert m["smoothquant"]["alpha"] == 0.8 and m["gptq"]["layers_gptq"] >= 1
    block = json.loads((out / "config.json").read_text())["quantization_config"]
    acts = block["config_groups"]["group_0"]["input_activations"]
    assert (acts["dynamic"], acts["strategy"]) == (True, "token")
    assert report["reload"].startswith("ok (transformers): outputs cosine")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--mode", "static", "--smoothquant", "1.5", "--calibration", VECTORS),
         "smoothquant=1.5: expected the migration strength alpha in (0, 1)"),
        (("--weight-algorithm", "gptq",), "weight_algorithm 'gptq' needs a calibration source"),
        (("--mode", "static", "--calibration", VECTORS, "--target", "output_sqnr_db=500"),
         "target: output_sqnr_db >= 500 cannot be met: the best achieved"),
        (("--target", "output_cosine"), "--target 'output_cosine': expected METRIC=NUMBER"),
    ],
    ids=["smoothquant-range", "gptq-without-data", "unmeetable-target", "target-syntax"],
)
def test_bad_llm_options_exit_2(tmp_path, args, message):
    res = cli("quantize", MLP, "-o", "x.safetensors", "--quiet", *args, cwd=tmp_path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "x.safetensors").exists()
