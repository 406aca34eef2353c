"""Wall time of one whole weight-only job, stage by stage, against the floor and the peer.

For generated Llama-architecture ``hf:`` folders (random float32 weights, safetensors on disk)
of about 20M, 100M and 1B parameters, each measured in a fresh process (imports included):

* ``floor``  — ``safetensors`` load + save of the same bytes, nothing else: what any job that
               reads and writes the checkpoint costs at least;
* ``torchao``— transformers ``from_pretrained`` + torchao ``Int8WeightOnlyConfig`` +
               ``torch.save`` of the state dict: the path a user would pick (``bench`` extra);
* ``mono-quant``, ``MONO_QUANT_COMPILE=never`` and the default (``auto``) — the command a
               user runs, ``mono-quant quantize hf:FOLDER -o OUT.safetensors`` (``run_pipeline``).
               For these Llama folders its default streams the checkpoint (``stream`` unset:
               :mod:`mono_quant.pipeline.auto_stream`): quantize, reload check, hash, no
               model built; the compile switch applies to the streamed kernels too;
* ``mono-quant --no-stream`` (default compile) — the in-memory module path: transformers
               load, quantize, save, served check, hash. It must write the same bytes as
               the streamed runs (checked: every run's sha256 is compared).

Each stage's time is taken from the command's own ``<stage> ...`` lines on stderr,
timestamped as they arrive: ``start`` is interpreter start-up, imports and argument parsing
up to the first stage; ``exit`` runs from the report's last line to the process's end.

Targets (issue 9): a whole job within 1.5x the floor for >= 100M parameters and faster than the
torchao path; compile (``auto``) never more than 5 % slower than eager. Every figure is printed
as a ratio to the floor of the same run (machines of this kind differ up to 3x in speed).

Each row also gives the child process's CPU time (user + sys, from ``getrusage``), steadier
than wall time on a loaded machine. With ``--repeat N`` the three ``mono-quant`` modes run N
times each in rotated order (never, auto, in-memory; auto, in-memory, never; ...), so none
always runs after the same one (its page cache and writeback); the table gives each mode's
median run (the faster of the two middle runs for an even N), the median of the rounds'
``auto / never`` and ``auto / in-memory`` ratios, and the rounds as they finish.

Usage: ``python benchmarks/job_time.py [--sizes 20M 100M 1B] [--work-dir /tmp/mq-job-time]
[--repeat N]``
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import resource
import statistics
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

#: run_pipeline's stages (the CLI's ``<stage> ...`` lines), as the table names them.
STAGES = {"loading": "load", "loading calibration data": "calibrate",
          "quantizing": "quantize", "writing": "save", "reloading": "reload",
          "hashing": "hash"}


def _children_cpu() -> float:
    """User + sys seconds of this process's reaped children (one child runs at a time)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(code: str, *args: str, env: dict[str, str] | None = None) -> tuple[float, dict]:
    t0, c0 = time.perf_counter(), _children_cpu()
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, check=False)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    last = out.stdout.strip().splitlines()[-1]
    return wall, {**ast.literal_eval(last), "cpu": _children_cpu() - c0}


def _cli() -> str:
    """The ``mono-quant`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "mono-quant"
    if not script.exists():
        raise SystemExit(f"{script} not found: pip install -e . in this environment")
    return str(script)


#: The mono-quant modes: name -> (MONO_QUANT_COMPILE, extra CLI flags).
MODES = {"never": ("never", ()), "auto": ("auto", ()), "in-memory": ("auto", ("--no-stream",))}
#: The table's name of each mode's row.
MODE_ROWS = {"never": "mono-quant (default: streamed; COMPILE=never)",
             "auto": "mono-quant (default: streamed; COMPILE=auto)",
             "in-memory": "mono-quant --no-stream (in memory; COMPILE=auto)"}


def _run_cli(folder: Path, out: Path, mode: str) -> tuple[float, dict]:
    """Wall time of ``mono-quant quantize`` and its stages, from its stderr lines' arrival."""
    compile_mode, flags = MODES[mode]
    env = {**os.environ, "MONO_QUANT_COMPILE": compile_mode, "PYTHONUNBUFFERED": "1"}
    t0, c0 = time.perf_counter(), _children_cpu()
    proc = subprocess.Popen([_cli(), "quantize", f"hf:{folder}", "-o", str(out), *flags],
                            env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    parts: dict[str, float] = {}
    stage, since, lines = "start", t0, []
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.perf_counter()
        lines.append(line)
        name = line.strip().removesuffix(" ...")
        name = name.partition(" (")[0] if name.partition(" (")[0] in STAGES else name
        if name in STAGES or line.startswith("mono-quant quantize:"):
            parts[stage] = parts.get(stage, 0.0) + now - since
            stage, since = STAGES.get(name, "report"), now
    code = proc.wait()
    end = time.perf_counter()
    wall = end - t0
    parts[stage] = parts.get(stage, 0.0) + end - since
    if code != 0:
        raise RuntimeError("".join(lines)[-3000:])
    parts["exit"] = parts.pop("report", 0.0)
    parts["cpu"] = _children_cpu() - c0
    return wall, parts


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


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _modes(folder: Path, out: Path, repeat: int) -> list[tuple[str, float, dict]]:
    """(mode, wall, stages) of each mono-quant mode's median run (by wall), the modes run
    ``repeat`` times each in rotated order; the artifacts of every run (streamed and in
    memory) must be byte-identical."""
    runs: dict[str, list[tuple[float, dict]]] = {m: [] for m in MODES}
    names = list(MODES)
    digests = set()
    for i in range(repeat):
        order = names[i % len(names):] + names[:i % len(names)]
        for mode in order:
            dst = Path(f"{out}-{mode}.safetensors")
            wall, parts = _run_cli(folder, dst, mode)
            runs[mode].append((wall, parts))
            digests.add(_sha256(dst))
        if repeat > 1:
            print(f"  round {i + 1}/{repeat} ({', '.join(order)}): " + ", ".join(
                f"{m} {runs[m][-1][0]:.2f} s wall / {runs[m][-1][1]['cpu']:.2f} s CPU"
                for m in order) + f", load {os.getloadavg()[0]:.2f}", flush=True)
    if len(digests) != 1:
        raise SystemExit(f"{folder}: the mono-quant runs wrote {len(digests)} different "
                         "artifacts; expected byte-identical ones")
    print(f"  artifact sha256 {digests.pop()[:16]}... identical in all {len(MODES) * repeat} "
          "runs (streamed and in memory)", flush=True)
    if repeat > 1:
        for a, b in (("auto", "never"), ("auto", "in-memory")):
            ratios = [(x[0] / y[0], x[1]["cpu"] / y[1]["cpu"])
                      for x, y in zip(runs[a], runs[b], strict=True)]
            print(f"  {a} / {b}, median of the {repeat} rounds' ratios: wall "
                  f"{statistics.median(r[0] for r in ratios):.3f}, CPU "
                  f"{statistics.median(r[1] for r in ratios):.3f}", flush=True)
    medians = []
    for mode, got in runs.items():
        got = sorted(got, key=lambda r: r[0])
        wall, parts = got[(len(got) - 1) // 2]
        parts = {**parts, "cpu median": statistics.median(p["cpu"] for _, p in got)}
        medians.append((mode, wall, parts))
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/mq-job-time"))
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each mono-quant mode, rotated (median reported)")
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    print(f"# job_time on {platform.processor() or platform.machine()}, {os.cpu_count()} "
          f"cores, python {platform.python_version()}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
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
        for mode, wall, parts in _modes(folder, out, args.repeat):
            rows.append((size, params, mib, MODE_ROWS[mode], wall, floor, parts))
        for f in args.work_dir.glob(f"out-{size}*"):
            f.unlink()
    print("\n| model | checkpoint | what | wall (s) | × floor | stages (s) |")
    print("| --- | ---: | --- | ---: | ---: | --- |")
    for size, params, mib, what, wall, floor, parts in rows:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
        print(f"| {size} ({params / 1e6:.0f}M) | {mib:.0f} MiB | {what} | {wall:.2f} | "
              f"{wall / floor:.2f} | {stages} |")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n" + json.dumps([r[:6] for r in rows]))


if __name__ == "__main__":
    main()
