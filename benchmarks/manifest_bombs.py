"""Manifest bombs: how long and how much memory a hostile manifest costs before it is refused.

Each case is a few hundred bytes to a few KB of YAML/JSON; each runs ``load_manifest`` in a
fresh interpreter whose address space is capped (``--cap-gib``, default 2), and the child
reports the wall time of the call, its outcome, and its peak RSS (``getrusage``, which
includes the ~100 MB of imports). A case the code does not bound ends in ``MemoryError`` at
the cap, or in the ``--timeout``.

* alias — nine levels of ten YAML aliases: 10⁹ strings once expanded (``labels``, ``exclude``)
* matrix — three matrix keys × 1,000 values: 10⁹ jobs
* json-nesting — a JSON manifest nested 100,000 deep
* wide — 10,000 jobs listed one by one (the cap, accepted: the cost of a legitimate maximum)

Usage:
    python benchmarks/manifest_bombs.py
    PYTHONPATH=/path/to/other/checkout/src python benchmarks/manifest_bombs.py   # its peer
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

_LEVELS = "\n".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)
CASES = {
    "alias": 'a: &a ["xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]\n' + _LEVELS + textwrap.dedent("""
        labels: {team: *i}
        jobs: [{name: a, model: "factory:mono_quant.demo_models:mlp", exclude: *i}]
        """),
    "matrix": "matrix:\n" + "".join(
        f"  {key}: [{', '.join(values)}]\n" for key, values in [
            ("group_size", [str(i) for i in range(1, 1001)]),
            ("min_layer_size", [str(i) for i in range(1000)]),
            ("exclude", [f"[l{i}]" for i in range(1000)]),
        ]) + "jobs: [{name: a, model: 'factory:mono_quant.demo_models:mlp'}]\n",
    "json-nesting": '{"jobs": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "wide": json.dumps({"jobs": [{"name": f"j{i}", "model": "factory:mono_quant.demo_models:mlp",
                                  "group_size": 64} for i in range(10_000)]}),
}

_CHILD = """
import resource, sys, time
cap = int(sys.argv[2]) << 30
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
from mono_quant.scheduler.manifest import load_manifest
t0 = time.monotonic()
try:
    specs = load_manifest(sys.argv[1])[1]
    outcome = f"accepted ({len(specs)} jobs)"
except MemoryError:
    outcome = "MemoryError"
except Exception as e:
    outcome = type(e).__name__ + ": " + str(e).splitlines()[0][:60]
seconds = time.monotonic() - t0
# VmHWM, this process image's own peak (ru_maxrss carries the parent's over across exec)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(f"{seconds:.3f}|{hwm // 1024}|{outcome}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap-gib", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    print(f"{'case':<14} {'bytes':>8} {'seconds':>9} {'peak MB':>8}  outcome")
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in CASES.items():
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(text)
            try:
                out = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(args.cap_gib)],
                                     capture_output=True, text=True, timeout=args.timeout,
                                     env=os.environ)
                line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else \
                    f"-|-|crashed: {out.stderr.strip().splitlines()[-1][:60]}"
            except subprocess.TimeoutExpired:
                line = f">{args.timeout:.0f}|-|timed out"
            seconds, peak, outcome = line.split("|", 2)
            print(f"{name:<14} {len(text.encode()):>8} {seconds:>9} {peak:>8}  {outcome}")


if __name__ == "__main__":
    main()
