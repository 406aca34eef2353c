"""Peak memory of streaming quantization vs. the in-memory path, on a synthetic checkpoint.

Writes a synthetic float32 checkpoint (default 2 GiB: an embedding, square linear layers,
norms) to a temporary folder, then runs each method in a fresh subprocess and reports that
process's peak RSS (``ru_maxrss``):

* ``import only``   - python + torch + mono_quant, nothing else (the floor of every row);
* ``streaming``     - ``quantize_checkpoint`` (the default kernels: torch.compile on CPU for
                      large tensors when a compiler works);
* ``streaming eager`` - the same with ``MONO_QUANT_COMPILE=never``;
* ``in-memory``     - the peer: ``safetensors.torch.load_file`` the whole checkpoint,
                      quantize every linear weight with the same kernel, ``save_file``
                      and fsync (streaming's atomic write fsyncs too).

Target: streaming peak < 0.25 x checkpoint size.

Usage:
    python benchmarks/stream_memory.py [--gib 2.0] [--hidden 4096] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mono_quant.io._atomic import atomic_file
from mono_quant.io._safetensors_stream import SafetensorsWriter, TensorSpec

CHILD_PRELUDE = """
import json, resource, sys, time
import torch, mono_quant
from mono_quant import QuantConfig
src, dst = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
"""

CHILDREN = {
    "import only": "",
    "streaming": "mono_quant.quantize_checkpoint(src, dst, QuantConfig(), progress=False)",
    "streaming eager": "mono_quant.quantize_checkpoint(src, dst, QuantConfig(), progress=False)",
    "in-memory": """
from safetensors.torch import load_file, save_file
from mono_quant.quant.quantize import quantize_weight
sd = load_file(src)
out = {}
for name, t in sd.items():
    if name.endswith('.weight') and t.ndim == 2 and 'embed' not in name:
        qw = quantize_weight(t, QuantConfig(), name)
        layer = name[: -len('.weight')]
        out[name], out[layer + '.weight_scale'] = qw.data, qw.scale
        out[layer + '.weight_zero_point'] = qw.zero_point
    else:
        out[name] = t
save_file(out, dst)
import os
fd = os.open(dst, os.O_RDONLY)
os.fsync(fd)  # durable, as quantize_checkpoint's atomic write is
os.close(fd)
""",
}

# VmHWM is the peak RSS of this process image. ru_maxrss is not used on Linux: it keeps the
# high-water mark of the image before exec, i.e. of the (v)forked benchmark process.
CHILD_EPILOGUE = """
try:
    with open('/proc/self/status') as f:
        peak_kib = next(int(l.split()[1]) for l in f if l.startswith('VmHWM:'))
except OSError:
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_bytes": peak_kib * 1024, "seconds": time.perf_counter() - t0}))
"""


def write_checkpoint(path: Path, gib: float, hidden: int) -> tuple[int, str]:
    """A synthetic Llama-like float32 checkpoint of about ``gib`` GiB, written tensor by
    tensor (this process never holds more than one tensor); returns (bytes, description)."""
    layer_bytes = hidden * hidden * 4
    embed = (min(32000, hidden * 2), hidden)
    n_layers = max(1, int((gib * 2**30 - embed[0] * hidden * 4) // layer_bytes))
    specs = {"model.embed_tokens.weight": TensorSpec(torch.float32, embed),
             "model.norm.weight": TensorSpec(torch.float32, (hidden,))}
    for i in range(n_layers):
        specs[f"model.layers.{i}.proj.weight"] = TensorSpec(torch.float32, (hidden, hidden))
        specs[f"model.layers.{i}.norm.weight"] = TensorSpec(torch.float32, (hidden,))
    g = torch.Generator().manual_seed(0)
    with atomic_file(path) as f:
        writer = SafetensorsWriter(f, specs, {"format": "pt"})
        for name, spec in specs.items():
            writer.write(name, torch.randn(spec.shape, generator=g) * 0.02)
        writer.finish()
    what = (f"embedding {embed[0]}x{hidden} + {n_layers} linear weights {hidden}x{hidden} "
            f"({layer_bytes / 2**20:.0f} MiB each) + norms")
    return sum(s.nbytes for s in specs.values()), what


def run_child(name: str, src: Path, dst: Path) -> dict:
    env = None
    if name == "streaming eager":
        env = {**os.environ, "MONO_QUANT_COMPILE": "never"}
    code = CHILD_PRELUDE + CHILDREN[name] + CHILD_EPILOGUE
    out = subprocess.run([sys.executable, "-c", code, str(src), str(dst)], capture_output=True,
                         text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr}")
    dst.unlink(missing_ok=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="checkpoint size (GiB)")
    parser.add_argument("--hidden", type=int, default=4096, help="linear layer size")
    parser.add_argument("--keep", type=Path, help="write the checkpoint here and keep it")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="mono-quant-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "model.safetensors"
    t0 = time.perf_counter()
    size, what = write_checkpoint(src, args.gib, args.hidden)
    os.sync()  # no writeback of the checkpoint competing with the first measured run
    print(f"checkpoint: {size / 2**30:.2f} GiB float32: {what}; written in "
          f"{time.perf_counter() - t0:.1f} s")
    print(f"{'method':16} {'peak RSS MiB':>12} {'x ckpt':>7} {'wall s':>7}")
    print("-" * 45)
    try:
        for name in CHILDREN:
            r = run_child(name, src, folder / "out.safetensors")
            print(f"{name:16} {r['peak_bytes'] / 2**20:>12.0f} {r['peak_bytes'] / size:>7.3f} "
                  f"{r['seconds']:>7.1f}")
    finally:
        if args.keep is None:
            src.unlink(missing_ok=True)
            (folder / "out.safetensors").unlink(missing_ok=True)
            folder.rmdir()
    print("target: streaming peak RSS < 0.25 x checkpoint size")


if __name__ == "__main__":
    main()
