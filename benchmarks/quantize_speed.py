"""Throughput of per-channel symmetric int8 weight quantization, against its peers.

For float32 tensors of 16M and 64M values (rows of 4096), prints GB/s of:

* ``copy``            — ``dst.copy_(w)`` into a preallocated tensor: the memory-bandwidth ceiling,
                        counted as 8 B per value (4 read + 4 written);
* ``mono-quant``      — ``quantize_weight_int8(w)`` on the default (``auto``) path;
* ``mono-quant eager``— the same with ``MONO_QUANT_COMPILE=never``;
* ``torchao``         — ``Int8Tensor.from_hp(w, PerRow())``, what torchao's
                        ``Int8WeightOnlyConfig`` runs (when torchao is installed: ``bench`` extra);
* ``torch.ao``        — ``torch.quantize_per_channel(...).int_repr()`` with precomputed scales.

Quantizers are counted as 5 B per value (4 read + 1 written). Each figure is the median of
``--repeat`` timed calls after a warm-up call (the warm-up includes torch.compile's one-off
compilation, reported separately). Ratios are to ``copy`` and to ``torchao`` of the same run.

Usage: ``python benchmarks/quantize_speed.py [--repeat 9] [--sizes 16 64]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch


def timed(fn, repeat: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), first


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64], help="Mi values")
    args = parser.parse_args()

    try:
        from torchao.quantization.quantize_.workflows.int8.int8_tensor import Int8Tensor
    except Exception:  # torchao missing or incompatible with this torch
        Int8Tensor = None

    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    header = f"{'values':>7} {'method':18} {'ms':>8} {'GB/s':>7} {'x copy':>7} {'x torchao':>9}"
    print(header)
    print("-" * len(header))
    for mi in args.sizes:
        measure(mi, args.repeat, Int8Tensor)


def measure(mi: int, repeat: int, Int8Tensor) -> None:
    from mono_quant import quantize_weight_int8
    from mono_quant.config import get_settings

    n = mi * 2**20
    torch.manual_seed(0)
    w = torch.randn(n // 4096, 4096)
    dst = torch.empty_like(w)
    rows: list[tuple[str, float, float]] = []  # (method, seconds, bytes per value)
    t_copy, _ = timed(lambda: dst.copy_(w), repeat)
    rows.append(("copy", t_copy, 8))
    t_ours, first = timed(lambda: quantize_weight_int8(w), repeat)
    rows.append(("mono-quant", t_ours, 5))
    os.environ["MONO_QUANT_COMPILE"] = "never"
    get_settings.cache_clear()
    t_eager, _ = timed(lambda: quantize_weight_int8(w), max(3, repeat // 3))
    del os.environ["MONO_QUANT_COMPILE"]
    get_settings.cache_clear()
    rows.append(("mono-quant eager", t_eager, 5))
    t_ao = None
    if Int8Tensor is not None:
        from torchao.quantization import PerRow

        t_ao, _ = timed(lambda: Int8Tensor.from_hp(w, PerRow()), max(3, repeat // 3))
        rows.append(("torchao", t_ao, 5))
    scale = torch.clamp(w.abs().amax(1) / 127, min=torch.finfo(torch.float32).tiny)
    zp = torch.zeros(w.shape[0], dtype=torch.int64)
    t_tao, _ = timed(lambda: torch.quantize_per_channel(w, scale, zp, 0, torch.qint8).int_repr(), 1)
    rows.append(("torch.ao", t_tao, 5))
    copy_gbs = 8 * n / t_copy / 1e9
    for method, t, bpv in rows:
        gbs = bpv * n / t / 1e9
        vs_ao = f"{t_ao / t:9.2f}" if t_ao else f"{'n/a':>9}"
        print(f"{mi:>6}M {method:18} {t * 1e3:8.2f} {gbs:7.2f} {gbs / copy_gbs:7.2f} {vs_ao}")
    print(f"{'':>7} (first mono-quant call, incl. compilation: {first:.2f} s)")


if __name__ == "__main__":
    main()
