"""W8A8 accuracy: every mode x SmoothQuant x RTN/GPTQ, against torchao and llm-compressor.

Two models, built in code (there is no pretrained LLM here), both real transformers classes:

* ``outlier`` — ``demo_models.outlier_transformer()``: a Llama (hidden 128, 2 layers) whose
  RMSNorm weights are x60 on three channels, the activation-outlier property of trained LLMs;
* ``llama`` — ``demo_models.tiny_transformer(hidden=256, layers=4)``: the same architecture at
  initialisation, without outliers.

Calibration: 8 batches of 4 x 64 random token ids; held-out evaluation: 4 other batches
(output cosine / SQNR of the logits against the float model) and a 2048-token stream
(perplexity, context 256, stride 128; on a random model perplexity is near the vocabulary
size, so only the *increase* is meaningful). ``lm_head`` stays in float everywhere.

Peers, on the same float weights and the same token ids:

* ``torchao int8 dynamic`` — ``quantize_(model, Int8DynamicActivationInt8WeightConfig())``
  (the ``bench`` extra);
* ``llm-compressor W8A8`` — ``oneshot`` with ``SmoothQuantModifier(0.8)`` +
  ``GPTQModifier(scheme="W8A8")``, run in the interpreter given by ``--llmcompressor-python``
  (it pins an older transformers, so it lives in its own virtual environment).

Time is the wall time of the quantization call (calibration included); peak memory is the
process's peak RSS growth during it (sampled every 2 ms).

Usage: ``python benchmarks/accuracy.py [--models outlier llama] [--llmcompressor-python PY]
[--threads 1]``
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from mono_quant import QuantConfig, demo_models, quantize_model
from mono_quant.quant.evaluate import perplexity
from mono_quant.quant.metrics import ErrorAccumulator

CONTEXT = 256


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRSS:
    """Peak resident-set growth while the block runs."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.002):
                self.peak = max(self.peak, _rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.mib = (self.peak - self.base) / 2**20


def data(vocab: int = 256):
    calib = demo_models.token_batches(n=8, batch=4, seq=64, seed=1, vocab=vocab)
    held = demo_models.token_batches(n=4, batch=4, seq=64, seed=9, vocab=vocab)
    stream = torch.randint(0, vocab, (2048,), generator=torch.Generator().manual_seed(5))
    return calib, held, stream


def logits_metrics(float_model, qmodel, held, stream, ppl_fp) -> dict[str, float]:
    acc = ErrorAccumulator()
    with torch.inference_mode():
        for batch in held:
            acc.add(float_model(**batch).logits.float(), qmodel(**batch).logits.float())
    ppl = perplexity(qmodel, stream, context=CONTEXT)
    return {"cosine": acc.cosine, "sqnr": acc.sqnr_db, "ppl_increase": ppl - ppl_fp}


def ours(model, mode, sq, alg, calib, held, stream, ppl_fp):
    cfg = QuantConfig(mode=mode, smoothquant=sq, weight_algorithm=alg, exclude=["lm_head"])
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        qmodel, _ = quantize_model(model, cfg, calib if (mode != "weight_only" or alg == "gptq")
                                   else None, progress=False)
    seconds = time.perf_counter() - t0
    return {**logits_metrics(model, qmodel, held, stream, ppl_fp), "seconds": seconds,
            "peak_mib": mem.mib}


def torchao_dynamic(model, held, stream, ppl_fp):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    qmodel = copy.deepcopy(model)
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        quantize_(qmodel, Int8DynamicActivationInt8WeightConfig(),
                  filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn != "lm_head")
    seconds = time.perf_counter() - t0
    return {**logits_metrics(model, qmodel, held, stream, ppl_fp), "seconds": seconds,
            "peak_mib": mem.mib}


_LLMC = r'''
import json, sys, time, copy, torch
from safetensors.torch import load_file
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier
from llmcompressor.modifiers.smoothquant import SmoothQuantModifier
sys.path[:0] = [sys.argv[2], sys.argv[2] + "/src"]  # mono_quant need not be installed there
from benchmarks.accuracy import PeakRSS, logits_metrics, data
from tests.io.hf_fixture import make_tokenizer  # the dataset is tokenized: only required
from transformers import LlamaConfig, LlamaForCausalLM
work = sys.argv[1]
spec = json.load(open(f"{work}/spec.json"))
model = LlamaForCausalLM(LlamaConfig(**spec["config"])).eval()
model.load_state_dict(load_file(f"{work}/model.safetensors"), strict=True)
model.config.save_pretrained(work)  # oneshot re-reads the config from name_or_path
model.config._name_or_path = work
float_model = copy.deepcopy(model)
calib, held, stream = data()
ds = Dataset.from_dict({"input_ids": [r.tolist() for b in calib for r in b["input_ids"]],
                        "attention_mask": [r.tolist() for b in calib for r in b["attention_mask"]]})
recipe = [SmoothQuantModifier(smoothing_strength=0.8),
          GPTQModifier(scheme="W8A8", targets="Linear", ignore=["lm_head"])]
t0 = time.perf_counter()
with PeakRSS() as mem:
    oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(ds),
            max_seq_length=64, processor=make_tokenizer())
seconds = time.perf_counter() - t0
out = logits_metrics(float_model, model, held, stream, spec["ppl_fp"])
print(json.dumps({**out, "seconds": seconds, "peak_mib": mem.mib}))
'''


def llmcompressor_w8a8(model, ppl_fp, python: str):
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as work:
        save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()},
                  f"{work}/model.safetensors")
        cfg = {k: getattr(model.config, k) for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "max_position_embeddings")}
        Path(work, "spec.json").write_text(json.dumps({"config": cfg, "ppl_fp": ppl_fp}))
        res = subprocess.run([python, "-c", _LLMC, work, str(Path(__file__).parents[1])],
                             capture_output=True, text=True, timeout=1800)
        if res.returncode != 0:
            return {"error": res.stderr.strip().splitlines()[-1] if res.stderr else "failed"}
        return json.loads(res.stdout.strip().splitlines()[-1])


MODELS = {
    "outlier": lambda: demo_models.outlier_transformer(),
    "llama": lambda: demo_models.tiny_transformer(hidden=256, layers=4),
}


def rows(name: str, llmc_python: str | None, peers_only: bool = False):
    model = MODELS[name]()
    calib, held, stream = data()
    ppl_fp = perplexity(model, stream, context=CONTEXT)
    yield "float", {"cosine": 1.0, "sqnr": float("inf"), "ppl_increase": 0.0, "seconds": 0.0,
                    "peak_mib": 0.0, "ppl_fp": ppl_fp}
    for mode in () if peers_only else ("weight_only", "static", "dynamic"):
        for sq in ((None,) if mode == "weight_only" else (None, 0.8)):
            for alg in ("rtn", "gptq"):
                label = f"{mode}{' +SQ0.8' if sq else ''} {alg.upper()}"
                yield label, ours(model, mode, sq, alg, calib, held, stream, ppl_fp)
    try:
        yield "torchao int8 dynamic", torchao_dynamic(model, held, stream, ppl_fp)
    except ImportError:
        yield "torchao int8 dynamic", {"error": "not installed (bench extra)"}
    if llmc_python:
        yield "llm-compressor W8A8 SQ0.8+GPTQ", llmcompressor_w8a8(model, ppl_fp, llmc_python)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--llmcompressor-python", help="python of a venv with llmcompressor")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--peers-only", action="store_true", help="only the peers' rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.models:
        print(f"\n#### {name}\n")
        print("| row | output cosine | output SQNR dB | perplexity increase | time s | "
              "peak MiB |")
        print("|---|---:|---:|---:|---:|---:|")
        for label, r in rows(name, args.llmcompressor_python, args.peers_only):
            if "error" in r:
                print(f"| {label} | {r['error']} | | | | |")
                continue
            extra = f" (float perplexity {r['ppl_fp']:.2f})" if "ppl_fp" in r else ""
            print(f"| {label}{extra} | {r['cosine']:.6f} | {r['sqnr']:.2f} | "
                  f"{r['ppl_increase']:+.4f} | {r['seconds']:.2f} | {r['peak_mib']:.0f} |",
                  flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
