"""Serve mono-quant's compressed-tensors W8A8 / W8A16 folders with vLLM and compare its
log-probabilities with mono-quant's own quantized model (the GPU check of issue 11).

For each mode (static, dynamic, weight_only), ``demo_models.outlier_transformer()`` is
quantized (SmoothQuant 0.8 for W8A8, ``lm_head`` in float), written as a compressed-tensors
folder (with a character tokenizer: vLLM wants one even when it is given token ids), and
loaded by ``vllm.LLM`` — vLLM picks ``CompressedTensorsW8A8Int8`` or
``CompressedTensorsWNA16`` from the ``quantization_config``. The same prompts (random token
ids) are scored by both: vLLM's ``prompt_logprobs`` against the log-softmax of the mono-quant
model's logits (float32, CPU), position by position. In float16 the two should agree to a
few hundredths of a nat; a scheme vLLM refuses, a tensor it cannot load, or a layout it reads
differently shows as an error or as differences of whole nats.

Needs a CUDA GPU (compute capability >= 7.5 for the int8 kernels, 8.0 for Marlin) and an
installed ``vllm``; without ``vllm`` it prints why and exits 0 (this machine has neither).
A failed check exits 1.

Usage: ``python benchmarks/vllm_serve.py [--modes static dynamic weight_only] [--tol 0.1]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from mono_quant import QuantConfig, demo_models, quantize_model, save_model

PROMPTS, LENGTH = 4, 48


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(3)
    return torch.randint(3, 127, (PROMPTS, LENGTH), generator=g).tolist()  # tokenizer ids


def _ours(qmodel, prompt: list[int]) -> torch.Tensor:
    """Log-probabilities of tokens 1..n-1 of ``prompt`` under mono-quant's model."""
    with torch.inference_mode():
        logits = qmodel(input_ids=torch.tensor([prompt])).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(prompt[1:])[:, None])[:, 0]


def _theirs(llm, vllm, prompt: list[int]) -> torch.Tensor:
    params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    out = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
    return torch.tensor([step[tok].logprob for step, tok in
                         zip(out.prompt_logprobs[1:], prompt[1:], strict=True)])


def check(mode: str, work: Path, vllm, tol: float) -> tuple[bool, str]:
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from tests.io.hf_fixture import make_tokenizer

    model = demo_models.outlier_transformer()
    calib = demo_models.token_batches(n=8, batch=4, seq=64, seed=1, vocab=128)
    kw = {"smoothquant": 0.8} if mode != "weight_only" else {}
    qmodel, info = quantize_model(model, QuantConfig(mode=mode, exclude=["lm_head"], **kw),
                                  calib, progress=False)
    folder = save_model(qmodel, work / mode, info, format="compressed-tensors")
    make_tokenizer().save_pretrained(folder)
    llm = vllm.LLM(model=str(folder), dtype="float16", enforce_eager=True,
                   gpu_memory_utilization=0.3, max_model_len=128)
    diffs = [(_theirs(llm, vllm, p) - _ours(qmodel, p)).abs().max().item() for p in _prompts()]
    del llm
    worst = max(diffs)
    return worst < tol, f"max |logprob difference| {worst:.4f} nat over {PROMPTS} prompts"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["static", "dynamic", "weight_only"])
    parser.add_argument("--tol", type=float, default=0.1, help="largest difference, nats")
    args = parser.parse_args()
    try:
        import vllm
    except ImportError as e:
        print(f"skipped: vllm is not importable ({e}); run this on a GPU machine with vllm")
        return 0
    ok = True
    with tempfile.TemporaryDirectory() as work:
        for mode in args.modes:
            try:
                passed, detail = check(mode, Path(work), vllm, args.tol)
            except Exception as e:  # report every mode, then fail
                passed, detail = False, f"{type(e).__name__}: {e}"
            ok &= passed
            print(f"| {mode} | {'ok' if passed else 'FAILED'} | {detail} |", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
