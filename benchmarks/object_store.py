"""Uploading an artifact to an object store: mono-quant's publish against a plain fsspec put.

Starts moto's S3 server on 127.0.0.1 (tests/s3server.py; needs the ``s3`` extra), writes a
file of SIZE MiB of random bytes, then times, best of REPEAT runs each, in the same run:

* ``Store.put`` (mono_quant/io/store.py): what a worker does to publish an artifact — one
  streamed write (multipart in 8 MiB parts) with the sha256 computed on the way;
* ``fs.put_file`` of the same bytes: fsspec's own upload (s3fs's multipart put, what
  ``aws s3 cp`` amounts to), no hash — the floor;
* ``sha256`` of the local file alone, to show what the hash costs by itself.

Usage:
    python benchmarks/object_store.py                  # 1024 MiB
    python benchmarks/object_store.py --size 256 --repeat 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

from mono_quant.io.store import open_store

#: The repository, for tests/s3server.py (the moto server the tests start, reused here).
REPO = Path(__file__).resolve().parents[1]


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB (default 1024)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tests.s3server import client, moto_server, new_bucket, s3_env

    with moto_server() as endpoint, tempfile.TemporaryDirectory() as tmp:
        os.environ.update(s3_env(endpoint))
        bucket = new_bucket(endpoint)
        src = Path(tmp) / "artifact.safetensors"
        with open(src, "wb") as f:
            for _ in range(args.size):
                f.write(os.urandom(1 << 20))
        store, fs = open_store(f"s3://{bucket}/bench"), client(endpoint)
        ours = _best(lambda: store.put(src, "a/1-1.safetensors"), args.repeat)
        floor = _best(lambda: fs.put_file(str(src), f"{bucket}/floor/a.safetensors"),
                      args.repeat)
        hashing = _best(lambda: _sha256(src), args.repeat)
    mib = args.size
    print(f"upload of {mib} MiB to moto on 127.0.0.1, best of {args.repeat}; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'path':<40} {'seconds':>8} {'MiB/s':>8} {'vs put':>7}")
    for name, t in (("Store.put (streamed, sha256 on the way)", ours),
                    ("fsspec put_file (the floor, no hash)", floor),
                    ("sha256 of the local file alone", hashing)):
        print(f"{name:<40} {t:8.2f} {mib / t:8.1f} {t / floor:7.2f}")


if __name__ == "__main__":
    main()
