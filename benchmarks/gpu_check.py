"""GPU check for a machine with CUDA: the sequential pipeline's peak device memory against
its bound, the pipeline choice admission sees, and the earlier CUDA paths.

Without CUDA it prints why and exits 0 (CI has no GPU; every path is also tested on CPU).

What it runs on ``cuda:0``:

1. ``sequential`` static W8A8 + SmoothQuant on a synthetic Llama ``hf:`` folder
   (``benchmarks/big_model.py``'s generator, ``--gib`` GiB float32) and prints
   ``torch.cuda.max_memory_allocated`` against the bound: the tensors outside the blocks +
   two blocks (:func:`~mono_quant.pipeline.sequential.block_peak_bytes`) + one calibration
   batch's activations x 8 + 256 MiB;
2. the admission hook point: :func:`~mono_quant.pipeline.choose.available_bytes` and
   :func:`~mono_quant.pipeline.choose.choose_pipeline` for ``pipeline: auto`` on the device,
   and ``mono_quant.worker.admission`` when that module exists (issue 12, part B);
3. the earlier CUDA paths: the same spec ``in_memory`` on a 2-block tiny model on CUDA and
   on the CPU, weight integers compared (weight-only: equal).

Usage:
    python benchmarks/gpu_check.py [--gib 2] [--hidden 2048]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _spec(folder: Path, cal: Path, pipeline: str, **quant):
    from mono_quant.pipeline import JobSpec, parse_calibration_source, parse_model_source
    from mono_quant.quant.qconfig import QuantConfig

    return JobSpec(parse_model_source(f"hf:{folder}"), QuantConfig(**quant),
                   calibration=parse_calibration_source(f"tensors:{cal}?batch_size=4"),
                   pipeline=pipeline)


def check_sequential(work: Path, gib: float, hidden: int) -> bool:
    from big_model import write_folder
    from safetensors.torch import save_file

    from mono_quant.pipeline import run_pipeline
    from mono_quant.pipeline.sequential import block_peak_bytes

    ckpt, blocks = write_folder(work / "model", gib, hidden)
    save_file({"input_ids": torch.randint(0, 8192, (8, 128))}, str(work / "cal.safetensors"))
    spec = _spec(work / "model", work / "cal.safetensors", "sequential", mode="static",
                 smoothquant=0.5)
    t0 = time.perf_counter()
    result = run_pipeline(spec, work / "seq.safetensors", device="cuda:0")
    seconds = time.perf_counter() - t0
    peak = result.info.metrics["peak_device_bytes"]
    outside = 2 * 8192 * hidden * 4 + hidden * 4
    activations = 8 * 4 * 128 * hidden * 4
    bound = outside + block_peak_bytes(ckpt - outside, blocks) + activations + (256 << 20)
    ok = peak <= bound
    print(f"sequential on cuda:0: {ckpt / 2**30:.2f} GiB checkpoint, {blocks} blocks, "
          f"{seconds:.1f} s; peak device memory {peak / 2**30:.3f} GiB, bound "
          f"{bound / 2**30:.3f} GiB: {'ok' if ok else 'OVER'}; host VmHWM "
          f"{result.info.metrics['peak_host_bytes'] / 2**30:.2f} GiB")
    return ok


def check_admission(work: Path) -> None:
    from mono_quant.pipeline.choose import available_bytes, checkpoint_bytes, choose_pipeline

    spec = _spec(work / "model", work / "cal.safetensors", "auto", mode="static")
    print(f"admission: free on cuda:0 {available_bytes('cuda:0') / 2**30:.1f} GiB, checkpoint "
          f"{checkpoint_bytes(work / 'model') / 2**30:.2f} GiB, auto -> "
          f"{choose_pipeline(spec, 'cuda:0')}")
    try:
        import mono_quant.worker.admission as admission  # issue 12 part B, when merged
    except ImportError:
        print("admission: mono_quant.worker.admission not present in this tree")
        return
    print(f"admission: module present ({', '.join(getattr(admission, '__all__', []))})")


def check_in_memory_cuda(work: Path) -> bool:
    from big_model import write_folder

    from mono_quant.io.formats import load_model
    from mono_quant.pipeline import run_pipeline

    write_folder(work / "tiny", 0.02, 256)
    spec = _spec(work / "tiny", work / "cal.safetensors", "in_memory", mode="weight_only")
    cuda = load_model(run_pipeline(spec, work / "cuda.safetensors", device="cuda:0").path)
    cpu = load_model(run_pipeline(spec, work / "cpu.safetensors", device="cpu").path)
    differ = [k for k in cpu if cpu[k].dtype == torch.int8 and not torch.equal(cpu[k], cuda[k])]
    print(f"in_memory weight-only on cuda:0 vs cpu: {len(differ)} int8 tensors differ")
    return not differ


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=2.0)
    p.add_argument("--hidden", type=int, default=2048)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: skipped: no CUDA device (torch.cuda.is_available() is False)")
        return 0
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as d:
        work = Path(d)
        ok = check_sequential(work, args.gib, args.hidden)
        check_admission(work)
        ok = check_in_memory_cuda(work) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
