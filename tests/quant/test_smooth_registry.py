"""SmoothQuant's registry path on small stand-ins (no transformers): which pairs a registered
``model_type`` maps, the scales folded into each pair against the paper's formula computed
here in numpy from the recorded inputs, and the float function left unchanged.

The transformers models of ``test_smoothquant.py`` check the same on real architectures but
take a minute each on the development machine; these run in well under a second.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from mono_quant.quant.smoothquant import (
    SmoothMapping,
    register_mapping,
    smooth_model,
    smoothing_scales,
)


class _Attn(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.o_proj = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, h):  # one head: mixes tokens, never channels
        a = torch.softmax(self.q_proj(h) @ self.k_proj(h).transpose(-1, -2) / 64, dim=-1)
        return self.o_proj(a @ self.v_proj(h))


class _Mlp(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(d, 2 * d), nn.Linear(d, 2 * d)
        self.down_proj = nn.Linear(2 * d, d)

    def forward(self, h):
        return self.down_proj(nn.functional.silu(self.gate_proj(h)) * self.up_proj(h))


class _Layer(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.input_layernorm, self.post_attention_layernorm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn, self.mlp = _Attn(d), _Mlp(d)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class _Body(nn.Module):
    def __init__(self, d: int, n: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Layer(d) for _ in range(n))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class _FakeLlama(nn.Module):
    """Llama's module names and data flow (pre-norm attention and SwiGLU MLP)."""

    def __init__(self, d: int = 8, n: int = 2) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type="llama")
        self.model = _Body(d, n)
        self.lm_head = nn.Linear(d, 5)

    def forward(self, x):
        return self.lm_head(self.model(x))


def _fake_llama(seed: int = 0) -> _FakeLlama:
    torch.manual_seed(seed)
    model = _FakeLlama().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name:  # ordinary norms with a few outlier channels
                p.copy_(torch.rand(p.shape) + 0.5)
                if name.endswith("weight"):
                    p[[1, 6]] = 20.0
    return model


def _inputs(model: nn.Module, names: list[str], batches: list[torch.Tensor]) -> dict:
    """The float64 inputs ``[rows, in]`` each named linear sees over ``batches``."""
    seen: dict[str, list[np.ndarray]] = {n: [] for n in names}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda _m, args, n=n: seen[n].append(args[0].detach().double().reshape(
            -1, args[0].shape[-1]).numpy())) for n in names]
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in hooks:
        h.remove()
    return {n: np.concatenate(v) for n, v in seen.items()}


def _paper_scales(x: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    """s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha), weights stacked along the output axis."""
    w = np.abs(np.concatenate(weights, axis=0)).max(axis=0)
    return np.abs(x).max(axis=0) ** alpha / w ** (1 - alpha)


LLAMA_PAIRS = [
    ("model.layers.{i}.input_layernorm",
     ("model.layers.{i}.self_attn.q_proj", "model.layers.{i}.self_attn.k_proj",
      "model.layers.{i}.self_attn.v_proj")),
    ("model.layers.{i}.post_attention_layernorm",
     ("model.layers.{i}.mlp.gate_proj", "model.layers.{i}.mlp.up_proj")),
    ("model.layers.{i}.self_attn.v_proj", ("model.layers.{i}.self_attn.o_proj",)),
    ("model.layers.{i}.mlp.up_proj", ("model.layers.{i}.mlp.down_proj",)),
]


def _expected_pairs(layers: range) -> list[tuple[str, tuple[str, ...]]]:
    # the registry's order: mapping by mapping, each over the model's modules in order
    return [(s.format(i=i), tuple(b.format(i=i) for b in bal))
            for s, bal in LLAMA_PAIRS for i in layers]


def test_the_registry_maps_every_block_of_a_known_type_and_lists_the_rest():
    model = _fake_llama()
    batches = [torch.randn(2, 6, 8) for _ in range(3)]
    before = [model(b) for b in batches]
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    report = smooth_model(model, batches, alpha=0.5, layers=layers)
    assert report.source == "registry"
    assert report.mappings == _expected_pairs(range(2))
    assert report.strengths == {s: 0.5 for s, _ in _expected_pairs(range(2))}
    assert report.unmapped == ["lm_head"]
    with torch.no_grad():
        for b, ref in zip(batches, before, strict=True):
            assert float((model(b) - ref).abs().max() / ref.abs().max()) < 1e-5


def test_only_pairs_with_a_quantized_balance_layer_are_smoothed():
    model = _fake_llama()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    report = smooth_model(model, [torch.randn(2, 6, 8)], alpha=0.5,
                          layers=["model.layers.1.mlp.down_proj", "lm_head"])
    assert report.mappings == [("model.layers.1.mlp.up_proj", ("model.layers.1.mlp.down_proj",))]
    assert report.unmapped == ["lm_head"]
    changed = sorted(k for k, v in model.state_dict().items() if not torch.equal(v, weights[k]))
    assert changed == ["model.layers.1.mlp.down_proj.weight", "model.layers.1.mlp.up_proj.bias",
                       "model.layers.1.mlp.up_proj.weight"]


def test_the_folded_scales_are_the_papers_over_every_batch():
    """Each norm's weight and bias are divided by s and its linears' input columns multiplied
    by s, with s from the maxima over all three batches (float32 weights: to 1e-6)."""
    model = _fake_llama(seed=3)
    batches = [torch.randn(2, 6, 8) * (1 + i) for i in range(3)]
    norm, balance = "model.layers.0.input_layernorm", LLAMA_PAIRS[0][1]
    balance = [b.format(i=0) for b in balance]
    x = _inputs(model, balance[:1], batches)[balance[0]]
    old = {k: v.detach().double().numpy().copy() for k, v in model.state_dict().items()}
    s = _paper_scales(x, [old[f"{b}.weight"] for b in balance], 0.75)
    smooth_model(model, batches, alpha=0.75, layers=balance)
    new = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    np.testing.assert_allclose(new[f"{norm}.weight"], old[f"{norm}.weight"] / s, rtol=1e-6)
    np.testing.assert_allclose(new[f"{norm}.bias"], old[f"{norm}.bias"] / s, rtol=1e-6)
    for b in balance:
        np.testing.assert_allclose(new[f"{b}.weight"], old[f"{b}.weight"] * s, rtol=1e-6)
        np.testing.assert_array_equal(new[f"{b}.bias"], old[f"{b}.bias"])


def test_num_samples_stops_the_statistics_pass():
    """Two samples per batch, num_samples=3: the second batch is the last one measured (the
    third, much larger, would change every scale)."""
    model, other = _fake_llama(seed=5), _fake_llama(seed=5)
    batches = [torch.randn(2, 6, 8) for _ in range(2)] + [torch.randn(2, 6, 8) * 100]
    layers = ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]
    smooth_model(model, batches, alpha=0.5, layers=layers, num_samples=3)
    smooth_model(other, batches[:2], alpha=0.5, layers=layers)
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k


class Conv1D(nn.Module):
    """transformers' GPT-2 ``Conv1D``: a linear whose weight is stored ``[in, out]``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out))
        self.bias = nn.Parameter(torch.randn(n_out))

    def forward(self, x):
        return x @ self.weight + self.bias


class _FakeGpt2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type="gpt2")
        self.h = nn.ModuleList([nn.Module()])
        self.h[0].ln_1 = nn.LayerNorm(6)
        self.h[0].attn = nn.Module()
        self.h[0].attn.c_attn = Conv1D(6, 4)

    def forward(self, x):
        return self.h[0].attn.c_attn(self.h[0].ln_1(x))


def test_a_conv1d_balance_layer_is_scaled_along_its_first_axis():
    torch.manual_seed(2)
    model = _FakeGpt2()
    with torch.no_grad():
        model.h[0].ln_1.weight[2] = 30.0
    batches = [torch.randn(3, 6) for _ in range(2)]
    x = _inputs(model, ["h.0.attn.c_attn"], batches)["h.0.attn.c_attn"]
    w_old = model.h[0].attn.c_attn.weight.detach().double().numpy().copy()  # [in, out]
    before = [model(b) for b in batches]
    report = smooth_model(model, batches, alpha=0.5, layers=["h.0.attn.c_attn"])
    assert report.mappings == [("h.0.ln_1", ("h.0.attn.c_attn",))]
    s = _paper_scales(x, [w_old.T], 0.5)
    w_new = model.h[0].attn.c_attn.weight.detach().double().numpy()
    np.testing.assert_allclose(w_new, w_old * s[:, None], rtol=1e-6)
    with torch.no_grad():
        for b, ref in zip(batches, before, strict=True):
            torch.testing.assert_close(model(b), ref, rtol=1e-5, atol=1e-5)


def test_a_registered_mapping_is_used_by_its_model_type():
    torch.manual_seed(4)
    model = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 3))
    model.config = SimpleNamespace(model_type="m17q-test-arch")
    register_mapping("m17q-test-arch", [SmoothMapping("0", ("1",))])
    report = smooth_model(model, [torch.randn(5, 4)], alpha=0.5, layers=["1"])
    assert (report.source, report.mappings) == ("registry", [("0", ("1",))])


class _GqaAttn(nn.Module):
    """4 query heads of dim 2 over 2 key/value heads, repeated in place as transformers'
    ``repeat_kv`` does: v_proj writes 4 channels, o_proj reads 8."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(8, 8), nn.Linear(8, 4)
        self.v_proj, self.o_proj = nn.Linear(8, 4), nn.Linear(8, 8)

    def forward(self, h):
        b, t, _ = h.shape
        q = self.q_proj(h).reshape(b, t, 4, 2).transpose(1, 2)  # [b, 4, t, 2]
        k, v = (p(h).reshape(b, t, 2, 2).transpose(1, 2).repeat_interleave(2, dim=1)
                for p in (self.k_proj, self.v_proj))
        a = torch.softmax(q @ k.transpose(-1, -2) / 64, dim=-1) @ v
        return self.o_proj(a.transpose(1, 2).reshape(b, t, 8))


def test_grouped_query_v_to_o_is_smoothed_per_kv_channel():
    """v_proj's 4 output channels feed o_proj's 8 input columns (query heads 0, 1 read kv head
    0; 2, 3 read kv head 1): s per v channel is the paper's formula over the columns it feeds
    (maxima over those columns), and the function is unchanged."""
    model = _fake_llama(seed=6)
    model.config = SimpleNamespace(model_type="llama", num_attention_heads=4,
                                   num_key_value_heads=2)
    for layer in model.model.layers:
        layer.self_attn = _GqaAttn()
    model.eval()
    batches = [torch.randn(2, 6, 8) for _ in range(2)]
    before = [model(b).detach() for b in batches]
    v, o = "model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj"
    x = _inputs(model, [o], batches)[o]  # [rows, 8]
    old = {k: t.detach().double().numpy().copy() for k, t in model.state_dict().items()}
    report = smooth_model(model, batches, alpha=0.5, layers=[o])
    assert report.mappings == [(v, (o,))]
    src = np.array([0, 1, 0, 1, 2, 3, 2, 3])  # the v channel each o column reads
    a = np.array([np.abs(x[:, src == c]).max() for c in range(4)])
    w = np.array([np.abs(old[f"{o}.weight"][:, src == c]).max() for c in range(4)])
    s = a ** 0.5 / w ** 0.5
    new = {k: t.detach().double().numpy() for k, t in model.state_dict().items()}
    np.testing.assert_allclose(new[f"{v}.weight"], old[f"{v}.weight"] / s[:, None], rtol=1e-6)
    np.testing.assert_allclose(new[f"{v}.bias"], old[f"{v}.bias"] / s, rtol=1e-6)
    np.testing.assert_allclose(new[f"{o}.weight"], old[f"{o}.weight"] * s[src], rtol=1e-6)
    with torch.no_grad():
        for b, ref in zip(batches, before, strict=True):
            assert float((model(b) - ref).abs().max() / ref.abs().max()) < 1e-5


def test_scales_need_one_input_axis_per_weight():
    w = torch.ones(2, 3)
    with pytest.raises(ValueError):
        smoothing_scales(torch.ones(3), [w, w], [1], alpha=0.5)


def test_a_zero_weight_column_keeps_scale_one_at_full_strength():
    """alpha = 1: s = max|X| (max|W|^0 = 1), except where the weights are all zero: 1."""
    w = torch.tensor([[2.0, 0.0, 1.0], [-3.0, 0.0, 0.5]])
    s = smoothing_scales(torch.tensor([4.0, 2.0, 0.0]), [w], [1], alpha=1.0)
    assert s.tolist() == [4.0, 1.0, 1.0]


class M17qNormLinear(nn.Sequential):
    """A model without a config: the registry is looked up by its class name."""


def test_a_model_without_config_is_looked_up_by_class_name():
    torch.manual_seed(4)
    model = M17qNormLinear(nn.LayerNorm(4), nn.Linear(4, 3))
    register_mapping("M17qNormLinear", [SmoothMapping("0", ("1",))])
    report = smooth_model(model, [torch.randn(5, 4)], alpha=0.5, layers=["1"])
    assert (report.source, report.mappings) == ("registry", [("0", ("1",))])


def test_channel_index_of_counts_that_do_not_line_up_is_none():
    from mono_quant.quant.smoothquant import channel_index

    bare = nn.Identity()  # no config at all
    assert channel_index(bare, 4, 8) is None
    bare.config = SimpleNamespace()  # a config without head counts
    assert channel_index(bare, 4, 8) is None
    bare.config = SimpleNamespace(num_attention_heads=4)  # kv heads default to the heads
    assert channel_index(bare, 4, 8) is None
    bare.config = SimpleNamespace(num_attention_heads=4, num_key_value_heads=3)  # 4 % 3 != 0
    assert channel_index(bare, 6, 8) is None
    bare.config = SimpleNamespace(num_attention_heads=2, num_key_value_heads=1, head_dim=4)
    assert channel_index(bare, 4, 8).tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
