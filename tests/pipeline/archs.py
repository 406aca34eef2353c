"""Tiny random checkpoints of real transformers classes, built in code (no hub, no weights
on disk): the architecture matrix of the served-load tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Arch:
    """One architecture: the transformers classes and a tiny config for them."""

    name: str
    model_class: str
    config_class: str
    config: dict[str, Any]
    tied: bool = False  # the output embedding shares the input embedding's weight
    conv1d: bool = False  # built from transformers' Conv1D ([in, out] weights)
    conv2d: bool = False  # has a Conv2d layer (no compressed-tensors form)
    #: what the matrix keeps in float. ViT casts pixel_values to its patch projection's
    #: weight dtype, so an int8 projection truncates the pixels: the quantized model runs
    #: but its outputs are wrong (quantize_model warns on the output cosine; README).
    exclude: tuple[str, ...] = ()
    #: (mode, format) -> why the served-load check must fail (a runtime's limitation)
    unservable: tuple[tuple[str, str, str], ...] = ()

    def build(self, seed: int = 0) -> torch.nn.Module:
        import transformers

        torch.manual_seed(seed)
        config = getattr(transformers, self.config_class)(**self.config)
        return getattr(transformers, self.model_class)(config).eval()

    @property
    def formats(self) -> tuple[str, ...]:
        """The formats this family can be written in."""
        return ("safetensors", "pt") if self.conv1d else ("safetensors", "pt",
                                                          "compressed-tensors")


_LM = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
       "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}

ARCHS = [
    Arch("bert", "BertForMaskedLM", "BertConfig",
         {"vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 64},
         tied=True),
    Arch("llama-tied", "LlamaForCausalLM", "LlamaConfig",
         {**_LM, "tie_word_embeddings": True}, tied=True),
    Arch("llama-untied", "LlamaForCausalLM", "LlamaConfig",
         {**_LM, "tie_word_embeddings": False}),
    Arch("mistral", "MistralForCausalLM", "MistralConfig",
         {**_LM, "tie_word_embeddings": False}),
    Arch("qwen2", "Qwen2ForCausalLM", "Qwen2Config", {**_LM, "tie_word_embeddings": True},
         tied=True),
    Arch("opt", "OPTForCausalLM", "OPTConfig",
         {"vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 2, "ffn_dim": 128,
          "num_attention_heads": 4, "word_embed_proj_dim": 64, "max_position_embeddings": 64},
         tied=True),
    Arch("gpt2", "GPT2LMHeadModel", "GPT2Config",
         {"vocab_size": 128, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64,
          "bos_token_id": 0, "eos_token_id": 0},
         tied=True, conv1d=True),
    Arch("phi3", "Phi3ForCausalLM", "Phi3Config",
         {**_LM, "num_key_value_heads": 4, "pad_token_id": 0, "bos_token_id": 1,
          "eos_token_id": 2, "tie_word_embeddings": False}),
    Arch("t5", "T5ForConditionalGeneration", "T5Config",
         {"vocab_size": 128, "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2,
          "num_heads": 4, "decoder_start_token_id": 0}, tied=True,
         # transformers 5 re-initialises T5Attention's q/k/v weights on load, which
         # compressed-tensors' pack-quantized layers no longer have (weight_packed instead)
         unservable=(("weight_only", "compressed-tensors",
                      "AttributeError: 'Linear' object has no attribute 'weight'"),)),
    Arch("vit", "ViTForImageClassification", "ViTConfig",
         {"image_size": 32, "patch_size": 8, "num_channels": 3, "hidden_size": 64,
          "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
          "num_labels": 10}, conv2d=True, exclude=("Conv2d",)),
]
