"""Tiny random checkpoints of real transformers (and torchvision) classes, built in code (no
hub, no weights on disk): the architecture matrix of the served-load tests."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from mono_quant.pipeline.served import probe_batch

#: Where ``make setup`` puts torchvision when it cannot go into the venv itself (Makefile).
VISION_DIR = Path(sys.prefix) / "vision"


def import_torchvision() -> types.ModuleType:
    """``import torchvision`` from the venv or from :data:`VISION_DIR`; skip the test when
    neither has it (install the 'vision' extra).

    The only torchvision for torch 2.13 that CI can install is PyPI's, built against CUDA
    torch: its C extension (the detection ops nms, roi_align, deform_conv2d) does not load
    over the CPU torch wheel, and torchvision 0.28 then fails at import, registering meta
    kernels for those missing ops (``RuntimeError: operator torchvision::nms does not
    exist``). In the venv it would break transformers' imports too, so the Makefile installs
    it apart, in :data:`VISION_DIR`. The CPU build lives on the PyTorch index, which CI cannot
    reach. The models here use none of those ops, so when (and only when) the import fails
    that way its meta registrations are replaced by an empty module: mocked because the
    matching build cannot be had.
    """
    try:
        import torchvision
    except ImportError:
        if not VISION_DIR.is_dir() or str(VISION_DIR) in sys.path:
            pytest.skip(f"torchvision is not installed (the 'vision' extra) nor in {VISION_DIR}")
        sys.path.append(str(VISION_DIR))
        return import_torchvision()
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType(
            "torchvision._meta_registrations")
        import torchvision
    return torchvision


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
    #: the modes the matrix runs: every mode mono-quant has
    modes: tuple[str, ...] = ("weight_only", "static", "dynamic")

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

    @property
    def refused_formats(self) -> tuple[str, ...]:
        """Formats that cannot hold this family's quantized layers (refused as bad_config)."""
        return ()

    def batch(self, model: torch.nn.Module) -> Any:
        """The batch the model is calibrated and compared on."""
        return probe_batch(model)


@dataclass(frozen=True)
class TorchvisionArch(Arch):
    """A torchvision model: ``model_class`` in ``torchvision.models``, called with ``config``
    (no transformers config: it is served with ``load_quantized`` only). compressed-tensors
    holds quantized Linear layers only, so a family with Conv2d layers is refused there."""

    image_size: int = 32

    def build(self, seed: int = 0) -> torch.nn.Module:
        tv = import_torchvision()
        torch.manual_seed(seed)
        package, _, name = self.model_class.partition(".")  # "resnet.ResNet"
        module = getattr(tv.models, package)
        config = {**self.config, "block": getattr(module, self.config["block"])}
        cls = getattr(module, name)
        return cls(**config).eval()

    @property
    def formats(self) -> tuple[str, ...]:
        return ("safetensors", "pt")

    @property
    def refused_formats(self) -> tuple[str, ...]:
        return ("compressed-tensors",) if self.conv2d else ()

    def batch(self, model: torch.nn.Module) -> Any:
        gen = torch.Generator().manual_seed(0)
        return torch.randn(2, 3, self.image_size, self.image_size, generator=gen)


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
          "num_heads": 4, "decoder_start_token_id": 0}, tied=True),
    Arch("vit", "ViTForImageClassification", "ViTConfig",
         {"image_size": 32, "patch_size": 8, "num_channels": 3, "hidden_size": 64,
          "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
          "num_labels": 10}, conv2d=True, exclude=("Conv2d",)),
    # torchvision's ResNet built from its own classes, one BasicBlock per stage (resnet18 has
    # two): Conv2d + BatchNorm + one Linear head; every mode, no compressed-tensors form
    TorchvisionArch("resnet", "resnet.ResNet", "",
                    {"block": "BasicBlock", "layers": [1, 1, 1, 1], "num_classes": 10},
                    conv2d=True),
]
