"""SmoothQuant: the smoothed float model computes the same function; mappings come from the
registry or from the model's structure; unmapped layers are listed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mono_quant import BadConfigError, QuantConfig, demo_models, quantize_model
from mono_quant.quant.smoothquant import smooth_model, smoothing_scales

transformers = pytest.importorskip("transformers", reason="the 'hf' extra is not installed")


def _max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def _llama_layers(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]


def _opt():
    torch.manual_seed(0)
    cfg = transformers.OPTConfig(vocab_size=256, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=64,
                                 word_embed_proj_dim=64)
    return transformers.OPTForCausalLM(cfg).eval()


def _bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  max_position_embeddings=64)
    return transformers.BertModel(cfg).eval()


def _gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=64)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _out(model, batch):
    with torch.inference_mode():
        out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


ARCHS = [
    pytest.param(demo_models.outlier_transformer, 4, id="llama"),
    pytest.param(_opt, 4, id="opt"),
    pytest.param(_bert, 2, id="bert-post-ln"),
    pytest.param(_gpt2, 4, id="gpt2"),
]


@pytest.mark.parametrize(("factory", "mappings"), ARCHS)
def test_smoothing_is_a_float_identity(factory, mappings):
    model = factory()
    batches = demo_models.token_batches(n=2, seq=16)
    before = [_out(model, b) for b in batches]
    layers = [n for n, m in model.named_modules()
              if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"]
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    report = smooth_model(model, batches, alpha=0.8, layers=layers)
    assert report.source == "registry" and len(report.mappings) == mappings
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, weights[k])]
    assert changed  # the weights really moved ...
    for b, ref in zip(batches, before, strict=True):  # ... and the function did not
        assert _max_rel_err(_out(model, b), ref) < 1e-5


def test_registry_maps_llama_norms_to_their_projections():
    model = demo_models.outlier_transformer()
    layers = _llama_layers(model)
    report = smooth_model(model, demo_models.token_batches(n=1), alpha=0.5, layers=layers)
    assert report.mappings[0] == ("model.layers.0.input_layernorm", (
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
        "model.layers.0.self_attn.v_proj"))
    assert ("model.layers.1.post_attention_layernorm",
            ("model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj")) in report.mappings
    # o_proj and down_proj read no norm: left alone and listed
    assert report.unmapped == [n for n in layers if n.endswith(("o_proj", "down_proj"))]


class _PreNormBlock(nn.Module):
    """An unregistered architecture: pre-norm MLP with a residual around it."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(32)
        self.up, self.gate = nn.Linear(32, 64), nn.Linear(32, 64)
        self.down = nn.Linear(64, 32)
        self.post = nn.LayerNorm(32)  # feeds the residual too: not smoothable
        self.head = nn.Linear(32, 8)

    def forward(self, x):
        h = self.norm(x)
        x = x + self.down(torch.relu(self.gate(h)) * self.up(h))
        p = self.post(x)
        return self.head(p) + p.sum(-1, keepdim=True)


def test_structure_discovery_verifies_each_pair():
    torch.manual_seed(0)
    model = _PreNormBlock().eval()
    with torch.no_grad():
        model.norm.weight[3] = 50.0
        model.norm.bias.normal_()
    batches = [torch.randn(4, 10, 32) for _ in range(2)]
    before = [model(b) for b in batches]
    report = smooth_model(model, batches, alpha=0.5, layers=["up", "gate", "down", "head"])
    assert report.source == "structure"
    assert report.mappings == [("norm", ("up", "gate"))]
    assert report.unmapped == ["down", "head"]
    assert float(model.norm.weight[3].detach()) < 50.0  # the outlier moved into up/gate
    for b, ref in zip(batches, before, strict=True):
        assert _max_rel_err(model(b), ref) < 1e-5


def test_scales_follow_the_formula():
    act = torch.tensor([4.0, 1.0, 0.0])
    w = torch.tensor([[1.0, 2.0, 3.0], [0.5, -4.0, 1.0]])
    s = smoothing_scales(act, [w], [1], alpha=0.5)
    expected = torch.tensor([(4.0 ** 0.5) / (1.0 ** 0.5), 1.0 / 2.0, 1.0], dtype=torch.float64)
    assert torch.allclose(s, expected)


def test_scales_combine_every_balanced_weight_by_its_input_axis():
    act = torch.tensor([4.0, 1.0, 0.0, 1e-12])
    w_linear = torch.tensor([[1.0, 2.0, 3.0, 0.0], [0.5, -4.0, 1.0, 0.0]])  # [out 2, in 4]
    w_conv1d = torch.tensor([[9.0, 0.0], [0.0, 1.0], [0.0, 0.0], [-1.0, 0.0]])  # [in 4, out 2]
    s = smoothing_scales(act, [w_linear, w_conv1d], [1, 0], alpha=0.5)
    # max|W| per input channel over both: [9, 4, 3, 1]; channel 2 has no activation (1);
    # channel 3: 1e-6 is clamped to 1e-5
    assert s.dtype == torch.float64
    assert s.tolist() == [2.0 / 3.0, 0.5, 1.0, 1e-5]
    s = smoothing_scales(torch.tensor([16.0, 1.0]), [torch.tensor([[16.0, 0.0]])], [1],
                         alpha=0.75)
    assert s.tolist() == [4.0, 1.0]  # 16^0.75 / 16^0.25; a weight of zero: 1


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5, 1.5, float("nan"), "half"],
                         ids=["0", "1", "neg", "above", "nan", "str"])
def test_alpha_outside_open_unit_interval_is_bad_config(alpha):
    with pytest.raises(BadConfigError, match="smoothquant=.*expected the migration strength"):
        QuantConfig(mode="static", smoothquant=alpha)


def test_smoothquant_needs_w8a8_and_calibration():
    with pytest.raises(BadConfigError, match="smoothquant: only helps W8A8"):
        QuantConfig(smoothquant=0.5)
    with pytest.raises(BadConfigError, match="smoothquant=0.5: needs calibration data"):
        quantize_model(demo_models.mlp(), QuantConfig(mode="dynamic", smoothquant=0.5),
                       progress=False)


def test_smoothquant_info_lists_unmapped_layers():
    model = demo_models.outlier_transformer()
    cfg = QuantConfig(mode="dynamic", smoothquant=0.8, exclude=["lm_head"])
    _, info = quantize_model(model, cfg, demo_models.token_batches(n=2), progress=False)
    sq = info.metrics["smoothquant"]
    assert sq["alpha"] == 0.8 and sq["source"] == "registry" and len(sq["smoothed"]) == 4
    assert sorted(sq["unmapped_layers"]) == sorted(
        n for n in info.selected_layers if n.endswith(("o_proj", "down_proj")))
    assert info.calibration_samples == 8
