"""The cost of the weight digest in an hf: job's idempotency key, against hashing every byte.

Writes a safetensors checkpoint of SIZE MiB (a few tensors of random bytes) into a temporary
folder, then times, best of REPEAT runs each (page cache warm, so reads cost memory speed):

* ``weights_digest(folder, cache)`` (pipeline/digest.py) with an empty content-hash cache:
  every byte is read and hashed (a folder's first submit);
* the same with the cache filled (every later submit, a new cache object): one ``stat`` and one
  SQLite lookup per weight file, no weight byte read; and again in the same submit (the same
  object: a ``stat`` only);
* after ``touch`` of the weights: the file is read and hashed again, once;
* the folder laid out as a Hugging Face cache snapshot (a symlink to a blob named by its
  sha256): the blob name only;
* the peers: ``sha256`` of every byte (hashlib, the floor of the first submit) and ``os.stat``
  of each weight file (the floor of a cached one).

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
from mono_quant.pipeline.content_cache import ContentHashCache
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

        files = [folder / "model.safetensors", folder / "config.json"]

        def first() -> None:
            weights_digest(folder, ContentHashCache(Path(tempfile.mkdtemp()) / "c.sqlite"))

        cache = ContentHashCache(Path(tmp) / "cache.sqlite")
        weights_digest(folder, cache)

        def touched() -> None:
            os.utime(data)
            weights_digest(folder, cache)

        rows = [
            ("weights_digest, empty cache (first submit)", _best(first, args.repeat)),
            ("weights_digest, cached (a later submit)",
             _best(lambda: weights_digest(folder, ContentHashCache(cache.path)), args.repeat)),
            ("weights_digest, again in the same submit",
             _best(lambda: weights_digest(folder, cache), args.repeat)),
            ("weights_digest after touch (read once)", _best(touched, args.repeat)),
            ("weights_digest (hub cache snapshot)", _best(lambda: weights_digest(snap),
                                                          args.repeat)),
            ("peer: sha256 of every byte (hashlib)",
             _best(lambda: hashlib.sha256(data.read_bytes()).hexdigest(), args.repeat)),
            ("peer: os.stat of each weight file",
             _best(lambda: [os.stat(f) for f in files], args.repeat)),
        ]
        print(f"checkpoint {args.size} MiB, best of {args.repeat}, load {os.getloadavg()[0]:.2f}")
        print(f"{'method':<44} {'seconds':>10}")
        for name, seconds in rows:
            print(f"{name:<44} {seconds:>10.5f}")


if __name__ == "__main__":
    main()
