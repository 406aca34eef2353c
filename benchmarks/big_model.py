"""Peak memory and time of the sequential pipeline against the in-memory one, on a synthetic
Llama-architecture ``hf:`` folder larger than a block.

Writes a sharded float32 ``LlamaForCausalLM`` folder of about ``--gib`` GiB (random weights
written tensor by tensor: the generator never holds the model; block count from the size,
``--hidden`` sets the width), a ``tensors:`` calibration file of random token ids
(``--samples`` x ``--seq-len``, in batches of ``--batch-size``), then runs static W8A8 +
SmoothQuant (alpha 0.5) through ``run_pipeline`` in a fresh subprocess per pipeline and
reports that process's peak RSS (``VmHWM``), the time per block and in total, its CPU time
(all threads) and the load average at its end:

* ``import only``  - python + torch + transformers + mono_quant (the floor of every row);
* ``sequential``   - ``pipeline: sequential``;
* ``in_memory``    - the peer (``pipeline: in_memory``: the whole model, a deep copy for
                     SmoothQuant, the quantized copy; at least 2x the model).

The peer needs more memory than a shared machine may have at ``--gib``: ``--peer-gib`` runs
it (and the sequential pipeline again, for the same-size ratio) on a second, smaller folder
in the same run; ``--skip-in-memory`` runs no peer at all.

Target (issue 12): sequential peak RSS <= 0.25 x the float checkpoint + 1 GiB.

Usage:
    python benchmarks/big_model.py [--gib 8] [--hidden 2048] [--samples 8] [--seq-len 128]
        [--batch-size 4] [--peer-gib 2 | --skip-in-memory] [--keep DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CHILD = """
import json, os, sys, time
from pathlib import Path
import torch, transformers, mono_quant
from mono_quant.pipeline import JobSpec, parse_calibration_source, parse_model_source, run_pipeline
from mono_quant.pipeline.memory import host_peak_bytes
from mono_quant.quant.qconfig import QuantConfig
folder, cal, out, pipeline, batch = sys.argv[1:6]
marks = []
t0 = time.perf_counter()
if pipeline != "none":
    spec = JobSpec(parse_model_source("hf:" + folder),
                   QuantConfig(mode="static", smoothquant=0.5),
                   calibration=parse_calibration_source("tensors:" + cal + "?batch_size=" + batch),
                   pipeline=pipeline)
    def on_stage(s, **e):
        marks.append((s, time.perf_counter()))
        if s == "quantizing block":  # progress as it goes (stderr: the parent's log)
            print(f"  block {e['block']}/{e['blocks']}: {marks[-1][1] - t0:.0f} s, "
                  f"VmHWM {host_peak_bytes() / 2**30:.2f} GiB, load {os.getloadavg()[0]:.1f}",
                  file=sys.stderr, flush=True)
    run_pipeline(spec, out, on_stage=on_stage)
print(json.dumps({"peak": host_peak_bytes(), "seconds": time.perf_counter() - t0,
                  "cpu": time.process_time(), "load": os.getloadavg()[0],
                  "blocks": [t for s, t in marks if s == "quantizing block"],
                  "start": next((t for s, t in marks if s == "quantizing"), t0)}))
"""


def llama_config(hidden: int, layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 43 // 16,
                       num_hidden_layers=layers, num_attention_heads=hidden // 128,
                       num_key_value_heads=hidden // 128, vocab_size=8192,
                       max_position_embeddings=512, tie_word_embeddings=False,
                       architectures=["LlamaForCausalLM"])


def tensor_shapes(config) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the model's parameters, from a meta skeleton (no memory)."""
    from transformers import LlamaForCausalLM

    from mono_quant.pipeline.skeleton import params_on_meta

    with params_on_meta():
        model = LlamaForCausalLM(config)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def write_folder(folder: Path, gib: float, hidden: int) -> tuple[int, int]:
    """The synthetic folder; returns (checkpoint bytes, blocks)."""
    from safetensors.torch import save_file

    one = tensor_shapes(llama_config(hidden, 1))
    block = sum(4 * torch.Size(s).numel() for n, s in one.items() if ".layers." in n)
    rest = sum(4 * torch.Size(s).numel() for n, s in one.items() if ".layers." not in n)
    layers = max(2, round((gib * 2**30 - rest) / block))
    config = llama_config(hidden, layers)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    gen = torch.Generator().manual_seed(0)
    weight_map, shard, size, index, total = {}, {}, 0, 0, 0

    def flush() -> None:
        nonlocal shard, size, index
        if shard:
            name = f"model-{index:05d}.safetensors"
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
            shard, size, index = {}, 0, index + 1

    for name, shape in tensor_shapes(config).items():
        t = (torch.ones(shape) if name.endswith("norm.weight")
             else torch.randn(shape, generator=gen) * 0.02)
        shard[name] = t
        size += t.numel() * 4
        total += t.numel() * 4
        if size >= 512 << 20:
            flush()
    flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))
    return total, layers


def run_child(folder: Path, cal: Path, out: Path, pipeline: str, batch: int) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(cal), str(out),
                          pipeline, str(batch)], stdout=subprocess.PIPE, text=True)
    if res.returncode != 0:  # its stderr went to ours
        raise SystemExit(f"{pipeline} failed (exit {res.returncode})")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(work: Path, gib: float, args: argparse.Namespace, pipelines: list[str]) -> dict:
    """Write a folder of ``gib`` GiB under ``work``, run ``pipelines`` on it (one table);
    the peak of each pipeline. The folder is removed after."""
    import shutil

    from safetensors.torch import save_file

    t0 = time.perf_counter()
    ckpt, layers = write_folder(work / "model", gib, args.hidden)
    gen = torch.Generator().manual_seed(1)
    save_file({"input_ids": torch.randint(0, 8192, (args.samples, args.seq_len),
                                          generator=gen)}, str(work / "cal.safetensors"))
    print(f"\ncheckpoint: {ckpt / 2**30:.2f} GiB float32, {layers} blocks, hidden "
          f"{args.hidden} (written in {time.perf_counter() - t0:.0f} s); calibration "
          f"{args.samples} x {args.seq_len} tokens, batches of {args.batch_size}")
    print("\n| run | peak RSS (VmHWM) | x checkpoint | s/block (median) | total s | CPU s | "
          "load |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    peaks: dict[str, float] = {"checkpoint": ckpt}
    for pipeline in ["none", *pipelines]:
        out = work / f"{pipeline}.safetensors"
        r = run_child(work / "model", work / "cal.safetensors", out, pipeline,
                      args.batch_size)
        marks = [r["start"], *r["blocks"]]
        per = sorted(b - a for a, b in itertools.pairwise(marks))
        median = f"{per[len(per) // 2]:.2f}" if per else "-"
        label = "import only" if pipeline == "none" else pipeline
        print(f"| {label} | {r['peak'] / 2**30:.2f} GiB | {r['peak'] / ckpt:.2f} | {median} | "
              f"{r['seconds']:.1f} | {r['cpu']:.0f} | {r['load']:.1f} |", flush=True)
        out.unlink(missing_ok=True)
        peaks[pipeline] = r["peak"]
        peaks[pipeline + " s"] = r["seconds"]
    if args.keep is None:
        shutil.rmtree(work / "model", ignore_errors=True)
    return peaks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=8.0, help="checkpoint size (float32)")
    p.add_argument("--hidden", type=int, default=2048, help="hidden size (multiple of 128)")
    p.add_argument("--samples", type=int, default=8, help="calibration samples")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sample")
    p.add_argument("--batch-size", type=int, default=4, help="samples per batch")
    p.add_argument("--skip-in-memory", action="store_true", help="no in_memory peer")
    p.add_argument("--peer-gib", type=float, help="run the in_memory peer (and sequential "
                   "again) on a folder of this size instead of --gib")
    p.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    args = p.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="big_model_"))
    peer = not args.skip_in_memory and args.peer_gib is None
    big = measure(work / "big", args.gib, args, ["sequential", *(["in_memory"] * peer)])
    target = 0.25 * big["checkpoint"] + 2**30
    verdict = "met" if big["sequential"] <= target else "NOT met"
    print(f"\ntarget: sequential peak <= 0.25 x checkpoint + 1 GiB = {target / 2**30:.2f} GiB: "
          f"{verdict}")
    if args.peer_gib is not None and not args.skip_in_memory:
        small = measure(work / "peer", args.peer_gib, args, ["sequential", "in_memory"])
        print(f"\nat {small['checkpoint'] / 2**30:.2f} GiB: sequential / in_memory = "
              f"{small['sequential'] / small['in_memory']:.2f}x the peak RSS, "
              f"{small['sequential s'] / small['in_memory s']:.2f}x the time")
    if args.keep is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
