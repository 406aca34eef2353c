"""Wall time of one whole weight-only job, stage by stage, against the floor and the peer.

For generated Llama-architecture ``hf:`` folders (random float32 weights, safetensors on disk)
of about 20M, 100M and 1B parameters, each measured in a fresh process (imports included):

* ``floor``  — ``safetensors`` load + save of the same bytes, nothing else: what any job that
               reads and writes the checkpoint costs at least;
* ``torchao``— transformers ``from_pretrained`` + torchao ``Int8WeightOnlyConfig`` +
               ``torch.save`` of the state dict: the path a user would pick (``bench`` extra);
* ``mono-quant``, ``MONO_QUANT_COMPILE=never`` and the default (``auto``) — ``run_pipeline``
               (what ``mono-quant quantize`` and the workers run): load, quantize, save,
               reload check, hash; each stage's time is printed.

Targets (issue 9): a whole job within 1.5x the floor for >= 100M parameters and faster than the
torchao path; compile (``auto``) never more than 5 % slower than eager. Every figure is printed
as a ratio to the floor of the same run (machines of this kind differ up to 3x in speed).

Usage: ``python benchmarks/job_time.py [--sizes 20M 100M 1B] [--work-dir /tmp/mq-job-time]``
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

#: hidden, intermediate, layers, heads, vocab — about 20M, 100M and 1B parameters.
SHAPES = {
    "20M": (256, 688, 4, 4, 32000),
    "100M": (768, 2048, 8, 12, 32000),
    "1B": (2048, 5632, 16, 16, 32000),
}

_MAKE = """
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
h, i, n, heads, vocab = map(int, sys.argv[2:7])
cfg = LlamaConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=n,
                  num_attention_heads=heads, num_key_value_heads=heads, vocab_size=vocab,
                  tie_word_embeddings=False)
torch.manual_seed(0)
with torch.device("meta"):
    model = LlamaForCausalLM(cfg)
model = model.to_empty(device="cpu")
for p in model.parameters():
    p.data.normal_(0, 0.02)
model.save_pretrained(sys.argv[1])
print(sum(p.numel() for p in model.parameters()))
"""

_FLOOR = """
import sys, time
t0 = time.perf_counter()
from safetensors.torch import load_file, save_file
t1 = time.perf_counter()
tensors = load_file(sys.argv[1] + "/model.safetensors")
t2 = time.perf_counter()
save_file(tensors, sys.argv[2])
t3 = time.perf_counter()
print({"import": t1 - t0, "load": t2 - t1, "save": t3 - t2})
"""

_TORCHAO = """
import sys, time
t0 = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM
from torchao.quantization import Int8WeightOnlyConfig, quantize_
t1 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
t2 = time.perf_counter()
quantize_(model, Int8WeightOnlyConfig())
t3 = time.perf_counter()
torch.save(model.state_dict(), sys.argv[2])
t4 = time.perf_counter()
print({"import": t1 - t0, "load": t2 - t1, "quantize": t3 - t2, "save": t4 - t3})
"""

_OURS = """
import sys, time
t0 = time.perf_counter()
from mono_quant.pipeline import JobSpec, parse_model_source, run_pipeline
marks, last = {}, [time.perf_counter(), "import"]
marks["import"] = last[0] - t0
def on_stage(stage, **_):
    now = time.perf_counter()
    if last[1] != "import":
        marks[last[1]] = marks.get(last[1], 0.0) + now - last[0]
    last[0], last[1] = now, stage
run_pipeline(JobSpec(parse_model_source("hf:" + sys.argv[1])), sys.argv[2], on_stage=on_stage)
marks[last[1]] = time.perf_counter() - last[0]
print(marks)
"""

#: run_pipeline's stages, as the table names them.
STAGES = {"import": "import", "loading": "load", "loading calibration data": "calibrate",
          "quantizing": "quantize", "writing": "save", "reloading": "reload",
          "hashing": "hash"}


def _run(code: str, *args: str, env: dict[str, str] | None = None) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, check=False)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    last = out.stdout.strip().splitlines()[-1]
    return wall, ast.literal_eval(last)


def _model(work: Path, size: str) -> tuple[Path, int]:
    folder = work / f"llama-{size}"
    marker = folder / "params.txt"
    if not marker.exists():
        out = subprocess.run([sys.executable, "-c", _MAKE, str(folder),
                              *map(str, SHAPES[size])], capture_output=True, text=True,
                             check=True)
        marker.write_text(out.stdout.strip().splitlines()[-1])
    return folder, int(marker.read_text())


def _has_torchao() -> bool:
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/mq-job-time"))
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    print(f"# job_time on {platform.processor() or platform.machine()}, {os.cpu_count()} "
          f"cores, python {platform.python_version()}")
    rows = []
    for size in args.sizes:
        folder, params = _model(args.work_dir, size)
        mib = (folder / "model.safetensors").stat().st_size / 2**20
        out = args.work_dir / f"out-{size}"
        floor, fparts = _run(_FLOOR, str(folder), f"{out}-floor.safetensors")
        rows.append((size, params, mib, "floor (safetensors load + save)", floor, floor, fparts))
        if _has_torchao():
            wall, parts = _run(_TORCHAO, str(folder), f"{out}-torchao.pt")
            rows.append((size, params, mib, "transformers + torchao + torch.save", wall, floor,
                         parts))
        for mode in ("never", "auto"):
            wall, parts = _run(_OURS, str(folder), f"{out}-{mode}.safetensors",
                               env={"MONO_QUANT_COMPILE": mode})
            parts = {STAGES.get(k, k): v for k, v in parts.items()}
            rows.append((size, params, mib, f"mono-quant (COMPILE={mode})", wall, floor, parts))
        for f in args.work_dir.glob(f"out-{size}*"):
            f.unlink()
    print("\n| model | checkpoint | what | wall (s) | × floor | stages (s) |")
    print("| --- | ---: | --- | ---: | ---: | --- |")
    for size, params, mib, what, wall, floor, parts in rows:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
        print(f"| {size} ({params / 1e6:.0f}M) | {mib:.0f} MiB | {what} | {wall:.2f} | "
              f"{wall / floor:.2f} | {stages} |")
    print("\n" + json.dumps([r[:6] for r in rows]))


if __name__ == "__main__":
    main()
