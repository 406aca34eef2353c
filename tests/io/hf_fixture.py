"""A tiny Hugging Face model folder (weights, config, tokenizer) built in code, no hub."""

from __future__ import annotations

from pathlib import Path

CALIBRATION_TEXT = "\n".join([
    "the quick brown fox jumps over the lazy dog",
    "int8 quantization keeps most of the accuracy",
    "",
    "calibration data should look like real inputs",
    "a batch service turns models into artifacts",
    "short line",
    "safetensors headers are json",
]) + "\n"


def make_tokenizer():
    """A character-level tokenizer over printable ASCII (ids < 128, inside the tiny vocab)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(i): i for i in range(32, 127)}
    vocab.update({"<unk>": 0, "<eos>": 1, "<pad>": 2})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>",
                                   pad_token="<pad>")


def make_hf_folder(path: Path, seed: int = 0, **save_kwargs) -> Path:
    """``mono_quant.demo_models.tiny_transformer`` + tokenizer, saved with save_pretrained."""
    from mono_quant import demo_models

    model = demo_models.tiny_transformer(seed=seed)
    model.save_pretrained(path, **save_kwargs)
    make_tokenizer().save_pretrained(path)
    return path
