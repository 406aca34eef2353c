"""``mono-quant quantize`` and ``mono-quant inspect`` end to end, in subprocesses."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from mono_quant import QuantizationInfo, demo_models, load_quantized, read_info
from mono_quant.io.hashing import sha256_path
from tests.io.hf_fixture import CALIBRATION_TEXT, make_hf_folder

MLP = "factory:mono_quant.demo_models:mlp?hidden=64"
VECTORS = "factory:mono_quant.demo_models:vector_batches?n=4&batch=8"


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mono_quant.scheduler.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def _report(stdout: str) -> dict[str, str]:
    lines = stdout.splitlines()
    assert lines[0].startswith("mono-quant quantize: "), stdout
    return {line[2:14].strip(): line[15:] for line in lines[1:]}


def test_building_the_cli_does_not_import_torch():
    # the choices come from the library's torch-free modules; `--help` must stay fast
    code = ("import sys\nfrom mono_quant.scheduler.cli import build_parser\nbuild_parser()\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_quantize_factory_static_then_inspect(tmp_path):
    out = tmp_path / "mlp.safetensors"
    res = cli("quantize", MLP, "-o", out, "--mode", "static", "--calibration", VECTORS,
              "--samples", "20", "--exclude", "4")
    assert res.returncode == 0, res.stderr
    report = _report(res.stdout)
    assert report["config"] == "symmetric per_channel static (weights: minmax)"
    assert report["layers"] == "2 of 3 quantized"
    assert report["reload"] == "ok (load_quantized): identical layers and tensors, ran on 1 batch"
    assert report["wrote"] == f"{out} (safetensors)"
    info = read_info(out)
    assert info.selected_layers == ["0", "2"] and info.calibration_samples == 20
    assert report["output"].startswith(f"cosine {info.metrics['output_cosine']:.6f}, SQNR ")
    assert report["weight SQNR"].startswith(f"{info.metrics['weight_sqnr_db']:.2f} dB overall")

    res = cli("inspect", out, "--json")
    assert res.returncode == 0, res.stderr
    assert QuantizationInfo.from_json(res.stdout) == info
    res = cli("inspect", out)
    assert res.returncode == 0, res.stderr
    assert f"artifact {out} (safetensors," in res.stdout
    assert "layers       2 quantized: 0, 2" in res.stdout
    assert "20 calibration samples" in res.stdout


def test_low_compression_is_a_warning_in_the_summary(tmp_path):
    out = tmp_path / "one-layer.safetensors"
    res = cli("quantize", MLP, "-o", out, "--include", "4", "--quiet")
    assert res.returncode == 0, res.stderr
    ratio = read_info(out).metrics["compression_ratio"]
    assert ratio < 1.5
    warning = [line for line in res.stdout.splitlines() if line.startswith("  warning")]
    assert warning == [f"  warning      low compression: {ratio:.2f}x (< 1.5x); 1 of 3 layers "
                       "quantized, the rest of the weights (embeddings, float layers) stay as "
                       "they were"]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    pytest.importorskip("transformers", reason="hf: sources need the 'hf' extra")
    folder = make_hf_folder(tmp_path_factory.mktemp("hf") / "tiny")
    (folder.parent / "calib.txt").write_text(CALIBRATION_TEXT)
    return folder


def test_quantize_hf_with_text_calibration_to_compressed_tensors(tmp_path, hf_folder):
    out = tmp_path / "tiny-w8a8"
    res = cli("quantize", f"hf:{hf_folder}", "-o", out, "--format", "compressed-tensors",
              "--mode", "static", "--calibration", f"text:{hf_folder.parent / 'calib.txt'}",
              "--samples", "4", "--exclude", "lm_head")
    assert res.returncode == 0, res.stderr
    report = _report(res.stdout)
    assert report["layers"] == "14 of 15 quantized"
    assert report["wrote"] == f"{out} (compressed-tensors)"
    # a compressed-tensors folder of a transformers model is checked where it is served
    assert report["reload"].startswith("ok (transformers): outputs cosine ")
    assert (out / "config.json").is_file() and read_info(out).calibration_samples == 4
    model = load_quantized(out, demo_models.tiny_transformer())
    with torch.inference_mode():
        model(**demo_models.token_batches(n=1)[0])


def test_unserveable_scheme_warns_and_strict_refuses(tmp_path, hf_folder):
    out = tmp_path / "tensor-w8a16"
    args = ["quantize", f"hf:{hf_folder}", "-o", out, "--format", "compressed-tensors",
            "--granularity", "per_tensor", "--quiet"]
    reason = ("not serveable by vLLM: vLLM's CompressedTensorsWNA16 (Marlin) takes per-channel "
              "or per-group weights (group size 32, 64 or 128); got per_tensor")
    res = cli(*args, "--strict")
    assert res.returncode == 2 and f"{reason} (--strict)" in res.stderr
    assert not out.exists()
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    assert f"warning: {reason}" in res.stderr
    assert f"  warning      {reason}" in res.stdout.splitlines()
    metrics = read_info(out).metrics  # recorded before writing, so the file has it too
    assert metrics["serveable_by"] == "none"
    assert metrics["serveable_reason"] == reason.removeprefix("not serveable by vLLM: ")


def test_quantize_stream(tmp_path, hf_folder):
    out = tmp_path / "tiny.safetensors"
    res = cli("quantize", f"hf:{hf_folder}", "-o", out, "--stream", "--granularity",
              "per_group", "--group-size", "32", "--quiet")
    assert res.returncode == 0, res.stderr
    report = _report(res.stdout)
    assert report["layers"] == "15 of 15 quantized"
    assert report["reload"].startswith("ok (streamed): ")
    assert "tensors loaded strictly" in report["reload"]
    # a verified family (llama): the in-memory artifact's metadata, no `streamed` mark
    assert "streamed" not in read_info(out).metrics


def test_stream_flags_pick_the_path_and_write_the_same_file(tmp_path, hf_folder):
    """Unset, ``--stream`` and ``--no-stream`` on a verified family: the same bytes, and the
    stage lines say which path ran."""
    shas, lines = {}, {}
    for flag in ("", "--stream", "--no-stream"):
        out = tmp_path / f"tiny{flag}.safetensors"
        res = cli("quantize", f"hf:{hf_folder}", "-o", out, *([flag] if flag else []))
        assert res.returncode == 0, res.stderr
        shas[flag] = sha256_path(out)
        lines[flag] = [x for x in res.stderr.splitlines() if x.startswith("quantizing")]
    assert shas[""] == shas["--stream"] == shas["--no-stream"]
    assert lines == {"": ["quantizing (streamed (auto)) ..."],
                     "--stream": ["quantizing (streamed) ..."],
                     "--no-stream": ["quantizing ..."]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("quantize", "onnx:model", "-o", "x.safetensors"), "unknown model source scheme onnx:"),
        (("quantize", MLP, "-o", "x.bin"), "cannot tell the format from the extension .bin"),
        (("quantize", MLP, "-o", "x.safetensors", "--mode", "static"),
         "mode 'static' needs a calibration source"),
        (("quantize", MLP, "-o", "x.safetensors", "--calibration", "tensors:missing.safetensors"),
         "missing.safetensors: no such file"),
        (("quantize", MLP, "-o", "x.safetensors", "--granularity", "per_group",
          "--group-size", "100"), "is not a multiple of group_size=100"),
        (("quantize", MLP, "-o", "x.safetensors", "--scheme", "weird"), "invalid choice: 'weird'"),
        (("quantize", MLP, "-o", "x.safetensors", "--mode", "static", "--calibration",
          "wrong.safetensors"), "calibration batch 0 (tensor [4, 100]) does not run through "
                                "the model: RuntimeError: mat1 and mat2 shapes"),
        (("quantize", MLP, "-o", "x.safetensors", "--samples", "8"),
         "samples counts calibration samples: give a calibration source too"),
        (("inspect", "missing.pt"), "missing.pt: no such file"),
        (("inspect", "garbage.safetensors"), "garbage.safetensors: not a safetensors file"),
        (("inspect", "plain.safetensors"), "plain.safetensors: no mono-quant metadata"),
    ],
    ids=["unknown-scheme", "bad-extension", "static-without-data", "missing-calibration",
         "group-size", "bad-choice", "wrong-calibration-shape", "samples-without-data",
         "missing-artifact",
         "garbage-artifact", "foreign-artifact"],
)
def test_bad_input_exits_2(tmp_path, args, message):
    (tmp_path / "garbage.safetensors").write_bytes(b"\xff" * 64)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, tmp_path / "plain.safetensors")
    save_file({"x": torch.zeros(4, 100)}, tmp_path / "wrong.safetensors")
    res = cli(*args, cwd=tmp_path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_storage_failure_exits_1(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    res = cli("quantize", MLP, "-o", tmp_path / "file" / "x.safetensors")
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "mono-quant quantize: failed:" in res.stderr and "cannot create the folder" in res.stderr
    assert "Traceback" not in res.stderr


def test_run_strict_refuses_an_unserveable_manifest_job_before_writing_any(tmp_path):
    """`run --strict` checks each job as submit streams the manifest (it is read once): the
    refusal rolls the batch back, so no job of the manifest is written."""
    import json
    import os
    import sqlite3

    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"jobs": [
        {"name": "ok", "model": MLP},
        {"name": "tensor-w8a16", "model": MLP, "format": "compressed-tensors",
         "granularity": "per_tensor"}]}))
    env = dict(os.environ, MONO_QUANT_CATALOG_URL=f"sqlite:///{tmp_path / 'c.db'}",
               MONO_QUANT_STORAGE_ROOT=str(tmp_path / "store"),
               MONO_QUANT_DATA_DIR=str(tmp_path / "data"))
    res = subprocess.run([sys.executable, "-m", "mono_quant.scheduler.cli", "run", str(manifest),
                          "--strict", "--quiet"], capture_output=True, text=True, timeout=300,
                         env=env)
    assert res.returncode == 2, res.stderr
    assert f"{manifest}: job tensor-w8a16: not serveable by vLLM: " in res.stderr
    with sqlite3.connect(tmp_path / "c.db") as db:
        assert db.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


def test_quantize_max_shard_size_writes_a_sharded_folder_inspect_reads(tmp_path):
    out = tmp_path / "mlp.safetensors"
    res = cli("quantize", MLP, "-o", out, "--max-shard-size", "4KB", "--quiet")
    assert res.returncode == 0, res.stderr
    assert out.is_dir()
    names = sorted(p.name for p in out.iterdir())
    assert names[-1] == "model.safetensors.index.json" and len(names) >= 3, names
    assert all(n.startswith("model-0000") for n in names[:-1])
    assert _report(res.stdout)["reload"].startswith("ok (load_quantized): loaded strictly")
    assert read_info(out).selected_layers == ["0", "2", "4"]
    res = cli("inspect", out)
    assert res.returncode == 0, res.stderr
    assert f"artifact {out} (safetensors," in res.stdout
    res = cli("quantize", MLP, "-o", tmp_path / "m.pt", "--max-shard-size", "4KB")
    assert res.returncode != 0 and "max_shard_size" in res.stderr


def test_the_console_script_skips_the_final_collection_and_keeps_exit_work(tmp_path):
    """`mono-quant` runs cli.entry: the job's objects are frozen (gc.freeze) before the
    interpreter exits, so its last collections skip them (4-6 s after a transformers job),
    while atexit handlers and the report still run; torch's allocator gets huge pages and
    OpenMP's idle threads sleep instead of spinning (both unless the user set them)."""
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="mono-quant")
    assert script.value == "mono_quant.scheduler.cli:entry"
    out = tmp_path / "mlp.safetensors"
    code = (
        "import atexit, gc, os, sys\n"
        "from mono_quant.scheduler import cli\n"
        "atexit.register(lambda: print('at exit: frozen', gc.get_freeze_count() > 0,\n"
        "                              os.environ.get('THP_MEM_ALLOC_ENABLE'),\n"
        "                              os.environ.get('OMP_WAIT_POLICY')))\n"
        f"sys.argv = ['mono-quant', 'quantize', {MLP!r}, '-o', {str(out)!r}, '--quiet']\n"
        "cli.entry()\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("mono-quant quantize: ")
    assert res.stdout.rstrip().endswith("at exit: frozen True 1 PASSIVE")
    assert read_info(out).selected_layers == ["0", "2", "4"]
