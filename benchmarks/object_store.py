"""Uploading an artifact to an object store: mono-quant's publish against a plain fsspec put.

Starts moto's S3 server on 127.0.0.1 (tests/s3server.py; needs the ``s3`` extra), writes a
file of SIZE MiB of random bytes, then times, best of REPEAT runs each, in the same run:

* ``Store.put`` (mono_quant/io/store.py): what a worker does to publish an artifact — one
  streamed write (multipart in 8 MiB parts) with the sha256 computed on the way;
* ``fs.put_file`` of the same bytes: fsspec's own upload (s3fs's multipart put, what
  ``aws s3 cp`` amounts to), no hash — the floor;
* ``fs.put_file`` again with ``Store.put``'s parts: 8 MiB, one at a time (s3fs's default is
  50 MiB parts, 10 at a time), no hash — what is left of the gap is the hash's;
* ``sha256`` of the local file alone, to show what the hash costs by itself.

Both uploads run with s3fs's read timeout raised from its 15 s default (``--read-timeout``,
through fsspec's configuration, as ``FSSPEC_S3='{"config_kwargs": {"read_timeout": 300}}'``
would): moto's ``CompleteMultipartUpload`` copies the whole object in one request (over
30 s for 1 GiB on a loaded machine); with 15 s the client times out and re-sends it while
the first is still running, and moto's completion is not safe against itself (the second
finds the parts freed: HTTP 500). The table counts the completions moto saw, and its 500s.

Usage:
    python benchmarks/object_store.py                  # 1024 MiB
    python benchmarks/object_store.py --size 256 --repeat 3
    python benchmarks/object_store.py --read-timeout 15  # s3fs's default: see above
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


def _timed(fn) -> float | str:
    """Seconds ``fn()`` took, or why it failed (a failed upload is a result here)."""
    t0 = time.perf_counter()
    try:
        fn()
    except Exception as e:
        return f"failed ({type(e).__name__}: {str(e)[:60]})"
    return time.perf_counter() - t0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def _completions(log: Path) -> tuple[int, int]:
    """(CompleteMultipartUpload requests, responses with status 500) in moto's request log."""
    text = log.read_text(errors="replace")
    posts = [line for line in text.splitlines() if "POST " in line and "uploadId=" in line]
    return len(posts), text.count('" 500 -')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB (default 1024)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--read-timeout", type=float, default=300,
                        help="s3fs read timeout in seconds (its default: 15)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import fsspec.config

    from tests.s3server import client, moto_server, new_bucket, s3_env

    # what FSSPEC_S3='{"config_kwargs": {"read_timeout": N}}' sets: both uploads get it
    fsspec.config.conf.setdefault("s3", {})["config_kwargs"] = {"read_timeout": args.read_timeout}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, \
            moto_server(log=Path(tmp) / "moto.log") as endpoint:
        os.environ.update(s3_env(endpoint))
        bucket = new_bucket(endpoint)
        src = Path(tmp) / "artifact.safetensors"
        with open(src, "wb") as f:
            for _ in range(args.size):
                f.write(os.urandom(1 << 20))
        store, fs = open_store(f"s3://{bucket}/bench"), client(endpoint)
        paths = {
            "Store.put (streamed, sha256 on the way)":
                lambda: store.put(src, "a/1-1.safetensors"),
            "fsspec put_file (the floor, no hash)":
                lambda: fs.put_file(str(src), f"{bucket}/floor/a.safetensors"),
            "put_file, 8 MiB parts one at a time": lambda: fs.put_file(
                str(src), f"{bucket}/serial/a.safetensors", chunksize=8 << 20,
                max_concurrency=1),
            "sha256 of the local file alone": lambda: _sha256(src),
        }
        runs: dict[str, list] = {name: [] for name in paths}
        for _ in range(args.repeat):  # interleaved: a change of load hits every path alike
            for name, fn in paths.items():
                runs[name].append(_timed(fn))
        completions, errors = _completions(Path(tmp) / "moto.log")
    _report(args, runs, load_before, completions, errors)


def _report(args, runs: dict[str, list], load_before: float, completions: int,
            errors: int) -> None:
    mib = args.size
    print(f"upload of {mib} MiB to moto on 127.0.0.1, best of {args.repeat} (interleaved), s3fs "
          f"read timeout {args.read_timeout:g} s; load {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after; moto saw {completions} CompleteMultipartUpload "
          f"requests, {errors} HTTP 500s")
    best = {name: min((t for t in ts if isinstance(t, float)), default=None)
            for name, ts in runs.items()}
    floor = best["fsspec put_file (the floor, no hash)"]
    print(f"{'path':<40} {'seconds':>8} {'MiB/s':>8} {'vs put':>7}  every run (s)")
    for name, t in best.items():
        every = ", ".join(f"{x:.1f}" if isinstance(x, float) else x for x in runs[name])
        if t is None:
            print(f"{name:<40} {'-':>8} {'-':>8} {'-':>7}  {every}")
            continue
        ratio = f"{t / floor:7.2f}" if floor else f"{'-':>7}"
        print(f"{name:<40} {t:8.2f} {mib / t:8.1f} {ratio}  {every}")

if __name__ == "__main__":
    main()
