"""Small, seeded models and calibration data for the demo, examples and tests.

Every function is a ``factory:`` target (``factory:mono_quant.demo_models:mlp``), so manifests
and the CLI can point at them without any file on disk.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "cnn",
    "image_batches",
    "mlp",
    "outlier_transformer",
    "tiny_transformer",
    "token_batches",
    "vector_batches",
]


def mlp(in_features: int = 256, hidden: int = 512, out_features: int = 64, seed: int = 0):
    """A 3-layer MLP with Gaussian-initialised weights (std 0.02, like a transformer's)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(in_features, hidden), nn.GELU(),
        nn.Linear(hidden, hidden), nn.GELU(),
        nn.Linear(hidden, out_features),
    )
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return model.eval()


def cnn(channels: int = 32, classes: int = 10, seed: int = 0):
    """A small CNN for 3x32x32 images (conv, ReLU, pooling, linear head)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(2 * channels, classes),
    ).eval()


def tiny_transformer(seed: int = 0, hidden: int = 64, layers: int = 2):
    """A tiny Llama built from a config (needs the ``hf`` extra: transformers)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=256, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config).eval()


def outlier_transformer(
    seed: int = 0, hidden: int = 128, layers: int = 2, factor: float = 60.0,
    channels: tuple[int, ...] = (5, 37, 90),
):
    """:func:`tiny_transformer` with activation outliers, the property of trained LLMs that
    makes W8A8 hard: the weights of every RMSNorm are ``factor`` (30-100 in real models) on a
    few ``channels`` and 1 elsewhere, so the inputs of q/k/v and gate/up carry a few channels
    tens of times larger than the rest. The model's float function is otherwise ordinary.
    """
    model = tiny_transformer(seed=seed, hidden=hidden, layers=layers)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("layernorm"):
                module.weight[list(channels)] *= factor
    return model


def vector_batches(n: int = 8, batch: int = 16, features: int = 256, seed: int = 1):
    """Gaussian input batches ``[batch, features]`` for :func:`mlp`."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, features, generator=g) for _ in range(n)]


def image_batches(n: int = 4, batch: int = 8, seed: int = 1):
    """Gaussian image batches ``[batch, 3, 32, 32]`` for :func:`cnn`."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 32, 32, generator=g) for _ in range(n)]


def token_batches(n: int = 4, batch: int = 4, seq: int = 32, vocab: int = 256, seed: int = 1):
    """Tokenized batches (dicts of ``input_ids`` / ``attention_mask``) for the tiny transformer."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(0, vocab, (batch, seq), generator=g),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long),
        }
        for _ in range(n)
    ]
