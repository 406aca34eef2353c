"""The cost of the weight digest in an hf: job's idempotency key, against hashing every byte.

Writes a safetensors checkpoint of SIZE MiB (a few tensors of random bytes) into a temporary
folder, then times, best of REPEAT runs each:

* ``weights_digest(folder)`` (pipeline/digest.py): name, size, mtime and the safetensors header
  of each weight file (what submit pays per hf: job);
* the same folder laid out as a Hugging Face cache snapshot (a symlink to a blob named by its
  sha256): the blob name only;
* ``sha256`` of every byte of the weights (the exact alternative), with a warm page cache.

Usage:
    python benchmarks/weights_digest.py                  # 1024 MiB
    python benchmarks/weights_digest.py --size 256 --repeat 5
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from mono_quant.io.hashing import sha256_path
from mono_quant.pipeline.digest import weights_digest


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="checkpoint MiB")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        n = args.size * 2**20 // 4 // 8
        tensors = {f"layers.{i}.weight": torch.empty(n, dtype=torch.float32).uniform_()
                   for i in range(8)}
        save_file(tensors, folder / "model.safetensors")
        (folder / "config.json").write_text("{}")
        data = folder / "model.safetensors"
        snap = Path(tmp) / "hub" / "snapshots" / "c0ffee"
        blobs = Path(tmp) / "hub" / "blobs"
        blobs.mkdir(parents=True)
        snap.mkdir(parents=True)
        blob = blobs / sha256_path(data)
        os.link(data, blob)
        os.symlink(os.path.relpath(blob, snap), snap / "model.safetensors")
        sha256_path(data)  # warm the page cache for the full hash

        digest = _best(lambda: weights_digest(folder), args.repeat)
        cached = _best(lambda: weights_digest(snap), args.repeat)
        full = _best(lambda: hashlib.sha256(data.read_bytes()).hexdigest(), args.repeat)
        print(f"checkpoint {args.size} MiB, best of {args.repeat}")
        print(f"{'method':<40} {'seconds':>10}")
        print(f"{'weights_digest (folder)':<40} {digest:>10.5f}")
        print(f"{'weights_digest (hub cache snapshot)':<40} {cached:>10.5f}")
        print(f"{'sha256 of every byte (warm cache)':<40} {full:>10.5f}")


if __name__ == "__main__":
    main()
