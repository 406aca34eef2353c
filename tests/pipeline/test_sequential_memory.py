"""Host memory of the sequential pipeline does not grow with the model: the two causes
found (docs/sequential.md, "Host memory"), each measured in a fresh process on Linux, where
``VmHWM`` and ``RssAnon`` are what a job reports and what an operator sees.

1. safetensors' ``safe_open`` maps the file: every page a read touches stays resident (and
   counts in ``VmHWM``) until the handle closes. The reload check kept every file of the
   artifact open while it read each layer, so the whole int8 artifact was resident at once
   (the old check: a 66 MiB rise on this test's 64 MiB artifact).
2. glibc keeps freed heap memory: after each block it is handed back (``malloc_trim``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="VmHWM, RssAnon and glibc are Linux's")

PRELUDE = """
import gc, json, torch
from pathlib import Path
from mono_quant.pipeline.memory import host_peak_bytes, reset_peaks
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
"""


def run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return __import__("json").loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # 50 s at a load average of 15 (random int8 and a fresh torch)
def test_the_reload_check_holds_one_layer_not_the_artifact(tmp_path):
    """16 layers of 4 MiB int8 (a 64 MiB artifact): the check's peak rise stays well under
    the artifact (it was the whole artifact with every shard mapped)."""
    got = run(f"""
        from mono_quant.io.formats import save_model
        from mono_quant.pipeline.seq_artifact import reload_check
        from mono_quant.quant.info import QuantizationInfo
        from mono_quant.quant.qconfig import QuantConfig
        g = torch.Generator().manual_seed(0)
        layers = [f"l{{i}}" for i in range(16)]
        tensors = {{}}
        for name in layers:
            tensors[name + ".weight"] = torch.randint(-127, 128, (2048, 2048), generator=g,
                                                      dtype=torch.int8)
            tensors[name + ".weight_scale"] = torch.ones(2048, 1)
            tensors[name + ".weight_zero_point"] = torch.zeros(2048, 1, dtype=torch.int8)
        info = QuantizationInfo(QuantConfig(mode="weight_only"), selected_layers=layers)
        path = save_model(tensors, r"{tmp_path}/a.safetensors", info)
        del tensors
        gc.collect()
        base = rss()
        reset_peaks("cpu")
        assert reload_check(path, info).startswith("ok: 48 tensors, 16 int8 layers")
        print(json.dumps({{"rise": host_peak_bytes() - base}}))
    """)
    assert got["rise"] < 24 << 20  # one 4 MiB layer (+ its int16 range check copies)


@pytest.mark.slow  # 49 s at a load average of 15 (a fresh process importing torch)
def test_freed_heap_memory_is_handed_back():
    """200 MiB freed in 1 MiB tensors pinned between small ones stays resident until
    release_freed_memory (what the pipeline calls after each block) hands it back."""
    got = run("""
        from mono_quant.pipeline.memory import release_freed_memory
        def anon():
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        big = torch.ones(8 << 20, dtype=torch.uint8)
        del big  # glibc's mmap threshold rises to 8 MiB: 1 MiB tensors come from the heap
        keep, freed = [], []
        for _ in range(200):
            freed.append(torch.ones(1 << 20, dtype=torch.uint8))
            keep.append(torch.ones(64, dtype=torch.uint8))  # pins the heap between them
        del freed
        before = anon()
        ok = release_freed_memory()
        print(json.dumps({"ok": ok, "returned": before - anon()}))
    """)
    assert got["ok"] and got["returned"] > 150 << 20


@pytest.mark.slow  # a fresh process importing torch
def test_smoothing_a_weight_needs_no_float64_copy_of_it():
    """SmoothQuant folds its scales into a 64 MiB weight (the balance side, and a linear's
    rows on the smoothed side): the peak rises by float64 chunks of a few rows, not by two
    float64 copies of the weight (256 MiB: what folding the whole tensor at once cost, per
    weight, at the block's high point)."""
    got = run("""
        from torch import nn
        from mono_quant.quant.smoothquant import _apply
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4096, 4096, bias=False), nn.Linear(4096, 4096,
                                                                           bias=False))
        s = torch.rand(4096, dtype=torch.float64) + 0.5
        gc.collect()
        base = rss()
        reset_peaks("cpu")
        with torch.no_grad():
            _apply(model, "0", ["1"], s)
        print(json.dumps({"rise": host_peak_bytes() - base}))
    """)
    # the whole-tensor fold holds two float64 copies at once: >= 256 MiB (measured 257);
    # the chunked one 48-98 MiB (16 MiB chunks, which glibc's heap keeps between calls)
    assert got["rise"] < 160 << 20


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,axis", [((37, 11), 1), ((37, 11), 0), ((5, 3, 2, 2), 1)])
def test_chunked_folding_gives_the_whole_tensor_values(monkeypatch, dtype, shape, axis):
    """_rescale_ in chunks of a few rows (forced small here) equals the whole-tensor float64
    expression it replaced, bit for bit, for per-row and per-column scales."""
    from mono_quant.quant import smoothquant

    monkeypatch.setattr(smoothquant, "_RESCALE_ELEMENTS", 20)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g).to(dtype)
    s = torch.rand(shape[axis], generator=g, dtype=torch.float64) + 0.5
    view = [1] * len(shape)
    view[axis] = -1
    for divide in (True, False):
        want = ((w.double() / s.reshape(view)) if divide else (w.double() * s.reshape(view))
                ).to(dtype)
        got = w.clone()
        smoothquant._rescale_(got, s.reshape(view), divide=divide)
        assert torch.equal(got, want)
