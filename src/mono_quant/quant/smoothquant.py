"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights before W8A8.

Trained LLMs have a few input channels whose activations are 10-100x larger than the rest;
one per-tensor (or per-token) activation scale then wastes most of the int8 range on them.
Per input channel ``j`` of a group of linears that read the same tensor, with ``X`` the
calibration inputs and ``W`` the linears' weights stacked along the output axis::

    s_j = max|X_j| ** alpha / max|W_{:,j}| ** (1 - alpha)

The operation that produces ``X`` (a norm, or a linear) has its output channel ``j`` divided
by ``s_j`` and every linear reading it has its input column ``j`` multiplied by ``s_j``:
``(X / s) (s W^T) = X W^T``, so the float model computes the same function (a test holds it
to a relative error below 1e-5) while ``X / s`` is much easier to quantize.

Which operation feeds which linears comes from an architecture registry (keyed by the
Hugging Face ``config.model_type``, else the model's class name; :func:`register_mapping`
adds one), or, for unknown models, from the model's structure: a norm whose output tensor is
the input of linears. Discovered pairs are checked by running a batch with test scales, and
dropped unless the output is unchanged (a norm that also feeds a residual is not smoothable).
Quantized layers that no mapping covers are left alone and listed in the report.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 4))
    >>> batches = [torch.randn(2, 8)]
    >>> before = model(batches[0])
    >>> report = smooth_model(model, batches, alpha=0.5, layers=["1"])
    >>> report.mappings, report.unmapped
    ([('0', ('1',))], [])
    >>> bool(torch.allclose(model(batches[0]), before, rtol=1e-5, atol=1e-6))
    True
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mono_quant.quant.calibration import batch_size, call_model, run_batch, to_device
from mono_quant.quant.qconfig import QuantConfig
from mono_quant.quant.smoothsearch import choose_strengths

__all__ = [
    "MAPPINGS",
    "SmoothMapping",
    "SmoothReport",
    "channel_index",
    "register_mapping",
    "smooth_model",
    "smoothing_scales",
]


@dataclass(frozen=True)
class SmoothMapping:
    """``smooth`` (a norm or linear, relative to a block) feeds ``balance`` (linears).

    Names are regular expressions for the part of a qualified name after the block prefix:
    for ``model.layers.3.input_layernorm`` and ``smooth="input_layernorm"``, the balance
    layers are looked up as ``model.layers.3.<balance>``.
    """

    smooth: str
    balance: tuple[str, ...]


# Besides the norms, two linear -> linear pairs are exact: attention mixes tokens, never
# channels, so v_proj's output channels reach o_proj's input columns unchanged (repeated per
# query head under grouped-query attention: see _channel_index); and SwiGLU multiplies
# act(gate) by up channel by channel, so up_proj's rows can carry down_proj's columns. Those
# are the inputs static per-tensor scales handle worst (down_proj's most of all).
_LLAMA = (
    SmoothMapping("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    SmoothMapping("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    SmoothMapping("self_attn.v_proj", ("self_attn.o_proj",)),
    SmoothMapping("mlp.up_proj", ("mlp.down_proj",)),
)
_OPT = (
    SmoothMapping("self_attn_layer_norm",
                  ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    SmoothMapping("final_layer_norm", ("fc1",)),
    SmoothMapping("self_attn.v_proj", ("self_attn.out_proj",)),
)
# Post-LN encoders: a LayerNorm output also feeds the residual, so it cannot absorb scales;
# the value projection can (attention mixes tokens, never channels).
_BERT = (SmoothMapping("attention.self.value", ("attention.output.dense",)),)
_GPT2 = (SmoothMapping("ln_1", ("attn.c_attn",)), SmoothMapping("ln_2", ("mlp.c_fc",)))

#: Architecture registry: model_type (or class name) -> mappings.
MAPPINGS: dict[str, tuple[SmoothMapping, ...]] = {
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA,
    "opt": _OPT,
    "bert": _BERT, "roberta": _BERT,
    "gpt2": _GPT2,
}


def register_mapping(key: str, mappings: Sequence[SmoothMapping]) -> None:
    """Register the SmoothQuant mappings of an architecture (``config.model_type``)."""
    MAPPINGS[key] = tuple(mappings)


@dataclass
class SmoothReport:
    """What :func:`smooth_model` did: (smoothed module, balanced linears) pairs, how they
    were found, and the quantized layers no mapping covers (left unsmoothed)."""

    mappings: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    source: str = "registry"
    unmapped: list[str] = field(default_factory=list)
    #: The strength each mapping's smoothed module took (0.0: measured better unsmoothed).
    strengths: dict[str, float] = field(default_factory=dict)

    def to_metrics(self, alpha: float) -> dict[str, Any]:
        return {"alpha": alpha, "source": self.source,
                "smoothed": {s: list(b) for s, b in self.mappings},
                "strengths": dict(self.strengths),
                "not_smoothed": sorted(s for s, a in self.strengths.items() if a == 0),
                "unmapped_layers": list(self.unmapped)}


def _is_norm(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return "Norm" in type(module).__name__ and isinstance(w, torch.Tensor) and w.ndim == 1


def _in_axis(module: nn.Module) -> int:
    # transformers' Conv1D (GPT-2) stores its weight as [in, out]; nn.Linear as [out, in]
    return 0 if type(module).__name__ == "Conv1D" else 1


def _model_key(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) or type(model).__name__


def _registry_pairs(model: nn.Module) -> list[tuple[str, tuple[str, ...]]] | None:
    mappings = MAPPINGS.get(_model_key(model))
    if mappings is None:
        return None
    modules = dict(model.named_modules())
    pairs = []
    for m in mappings:
        smooth_re = re.compile(rf"(?:(.*)\.)?{m.smooth}$")
        for name in modules:
            hit = smooth_re.fullmatch(name)
            if hit is None:
                continue
            prefix = f"{hit.group(1)}." if hit.group(1) else ""
            balance = tuple(prefix + b for b in m.balance)
            if all(b in modules for b in balance):
                pairs.append((name, balance))
    return pairs


class _Ranges:
    """Per-channel input minima and maxima (float32) of each linear."""

    def __init__(self) -> None:
        self.lo: dict[str, torch.Tensor] = {}
        self.hi: dict[str, torch.Tensor] = {}

    def update(self, name: str, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if name in self.lo:
            lo, hi = torch.minimum(self.lo[name], lo), torch.maximum(self.hi[name], hi)
        self.lo[name], self.hi[name] = lo, hi

    def absmax(self, name: str) -> torch.Tensor:
        return torch.maximum(self.lo[name].abs(), self.hi[name].abs())


class _Stats:
    """One pass over the data: per-channel input ranges of each linear (over every batch in
    ``all``, over the even-numbered batches in ``fit``: the strength search fits on those
    and measures on the others), and which norm's output tensor (the same object) each
    linear read."""

    def __init__(self, model: nn.Module, linears: Sequence[str], track_norms: bool) -> None:
        self.all, self.fit = _Ranges(), _Ranges()
        self.batches = 0
        self.fed_by: dict[str, set[str]] = {name: set() for name in linears}
        self._outputs: dict[int, str] = {}
        self._keep: list[torch.Tensor] = []  # holds outputs alive so ids are not reused
        modules = dict(model.named_modules())
        self.handles = [modules[n].register_forward_pre_hook(self._pre(n)) for n in linears]
        if track_norms:  # only for discovery: it keeps each batch's norm outputs alive
            self.handles += [m.register_forward_hook(self._post(n))
                             for n, m in modules.items() if _is_norm(m)]

    def _post(self, name: str):
        def hook(_m: nn.Module, _args: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                self._outputs[id(out)] = name
                self._keep.append(out)
        return hook

    def _pre(self, name: str):
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                return
            rows = x.detach().reshape(-1, x.shape[-1])
            lo, hi = rows.amin(0).float(), rows.amax(0).float()
            self.all.update(name, lo, hi)
            if self.batches % 2 == 0:
                self.fit.update(name, lo, hi)
            self.fed_by[name].add(self._outputs.get(id(x), ""))
        return hook

    def end_batch(self) -> None:
        self.batches += 1
        self._outputs.clear()
        self._keep.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _discovered_pairs(stats: _Stats) -> list[tuple[str, tuple[str, ...]]]:
    groups: dict[str, list[str]] = {}
    for linear, sources in stats.fed_by.items():
        if len(sources) == 1 and "" not in sources:
            groups.setdefault(next(iter(sources)), []).append(linear)
    return [(norm, tuple(linears)) for norm, linears in sorted(groups.items())]


def smoothing_scales(
    act_absmax: torch.Tensor, weights: Sequence[torch.Tensor], in_axes: Sequence[int],
    alpha: float, index: torch.Tensor | None = None,
) -> torch.Tensor:
    """``s = max|X|^alpha / max|W|^(1-alpha)`` per input channel (float64, 1 where a channel
    is all zero in the activations or the weights, so nothing is divided by zero).

    ``index`` (see :func:`channel_index`) maps each input column to the smoothed layer's
    output channel that feeds it; the maxima are then taken per output channel, and ``s``
    has one value per output channel.
    """
    # |w| and max are exact in the weight's own dtype, and widening to float64 is exact:
    # the same values as widening first, without a float64 copy of every weight
    w_absmax = torch.stack([
        w.detach().abs().amax(dim=1 - axis).double() for w, axis in zip(weights, in_axes,
                                                                         strict=True)
    ]).amax(0)
    a = act_absmax.double()
    if index is not None:
        a, w_absmax = _per_source(a, index), _per_source(w_absmax, index)
    s = a.pow(alpha) / w_absmax.pow(1.0 - alpha)
    ok = (a > 0) & (w_absmax > 0) & torch.isfinite(s)
    return torch.where(ok, s.clamp(min=1e-5), torch.ones_like(s))


def _per_source(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Max of ``values`` (one per input column) over the columns each source channel feeds."""
    n = int(index.max()) + 1
    return torch.zeros(n, dtype=values.dtype).scatter_reduce(0, index, values, "amax",
                                                             include_self=False)


def channel_index(model: nn.Module, n_out: int, n_in: int) -> torch.Tensor | None:
    """For each of the ``n_in`` input columns of the balance layers, which of the smoothed
    layer's ``n_out`` output channels feeds it; None when that is not known.

    One to one when the counts match. Under grouped-query attention ``o_proj`` reads
    ``num_attention_heads`` heads while ``v_proj`` writes ``num_key_value_heads``: column
    ``h * head_dim + d`` reads v channel ``(h // n_rep) * head_dim + d`` with
    ``n_rep = heads / kv_heads`` (transformers' ``repeat_kv`` repeats each kv head in place).

    Example:
        >>> channel_index(nn.Identity(), 4, 4).tolist()
        [0, 1, 2, 3]
    """
    if n_out == n_in:
        return torch.arange(n_in)
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None) or 0
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or (n_in // heads if heads else 0)
    if not heads or heads % kv_heads or n_in != heads * head_dim or n_out != kv_heads * head_dim:
        return None
    col = torch.arange(n_in)
    return (col // head_dim // (heads // kv_heads)) * head_dim + col % head_dim


def _out_channels(module: nn.Module) -> int:
    return int(module.weight.shape[0])  # a norm's [C] or a linear's [out, in]


@torch.no_grad()
def _apply(model: nn.Module, smooth: str, balance: Sequence[str], s: torch.Tensor,
           index: torch.Tensor | None = None) -> None:
    """Divide ``smooth``'s output channels by ``s``; multiply the balance layers' input
    columns by ``s[index]`` (``s`` itself when ``index`` is None)."""
    src = model.get_submodule(smooth)
    s = s.to(src.weight.device)
    if _is_norm(src):
        src.weight.copy_((src.weight.double() / s).to(src.weight.dtype))
    else:  # a linear: its output channels are the rows of its weight
        w = src.weight
        _rescale_(w, s.reshape(-1, *([1] * (w.ndim - 1))), divide=True)
    if getattr(src, "bias", None) is not None:
        src.bias.copy_((src.bias.double() / s).to(src.bias.dtype))
    if index is not None:
        s = s[index.to(s.device)]
    for name in balance:
        layer = model.get_submodule(name)
        w, axis = layer.weight, _in_axis(layer)
        shape = [1] * w.ndim
        shape[axis] = -1
        _rescale_(w, s.reshape(shape), divide=False)


#: Elements of the float64 temporary :func:`_rescale_` works on (16 MiB).
_RESCALE_ELEMENTS = 1 << 21


def _rescale_(w: torch.Tensor, scale: torch.Tensor, divide: bool) -> None:
    """``w = (w.double() / scale)`` (or ``*``) rounded back to ``w``'s dtype, in place and a
    few rows at a time: the same values as the whole-tensor expression, with a float64
    temporary of at most :data:`_RESCALE_ELEMENTS` elements instead of two float64 copies
    of the weight (a 8192 x 28672 down_proj: 1.9 GiB each). ``scale`` broadcasts against
    ``w``: one value per row, or the same row for every row."""
    per_row = scale.ndim == w.ndim and scale.shape[0] == w.shape[0] > 1
    step = max(1, _RESCALE_ELEMENTS // max(1, w[0].numel()))
    for start in range(0, w.shape[0], step):
        part = w[start:start + step]
        wide = part.double()
        s = scale[start:start + step] if per_row else scale
        wide.div_(s) if divide else wide.mul_(s)
        part.copy_(wide)


def _verified(model: nn.Module, pairs: list[tuple[str, tuple[str, ...]]], batch: Any,
              ) -> list[tuple[str, tuple[str, ...]]]:
    """The discovered pairs whose smoothing leaves the model's output unchanged."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        ref = _first(call_model(model, batch))

    def preserves(subset: list[tuple[str, tuple[str, ...]]]) -> bool:
        gen = torch.Generator().manual_seed(0)
        for smooth, balance in subset:
            n = model.get_submodule(balance[0]).weight.shape[_in_axis(
                model.get_submodule(balance[0]))]
            s = torch.rand(n, generator=gen, dtype=torch.float64) * 1.5 + 0.5
            with torch.no_grad():
                _apply(model, smooth, balance, s)
        with torch.inference_mode():
            out = _first(call_model(model, batch))
        model.load_state_dict(state)
        err = (out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp(min=1e-30)
        return bool(err < 1e-4)

    if not pairs or preserves(pairs):
        return pairs
    return [p for p in pairs if preserves([p])]


def _first(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    values = out.values() if isinstance(out, dict) else out
    return next(v for v in values if isinstance(v, torch.Tensor))


def smooth_model(
    model: nn.Module, data: Iterable[Any], *, alpha: float, layers: Sequence[str],
    num_samples: int | None = None, config: QuantConfig | None = None,
) -> SmoothReport:
    """Smooth ``model`` in place for the quantized ``layers``; return what was done.

    One pass over ``data`` collects per-channel input ranges (and, for unregistered
    architectures, which norm feeds which linears); then the scales are folded into the
    weights. Only mappings with at least one quantized balance layer are applied. With the
    ``config`` the model is quantized with, each mapping takes the strength up to ``alpha``
    (or none) that measures best on ``data`` (:mod:`~mono_quant.quant.smoothsearch`; a
    second pass); without it, every mapping takes ``alpha``.
    """
    was_training = model.training
    model.eval()
    try:
        stats, first_batch = _collect(model, data, num_samples)
        pairs, source = _pairs(model, stats, first_batch)
        wanted = set(layers)
        pairs = [(s, b) for s, b in pairs if wanted & set(b)
                 and all(x in stats.all.lo for x in b) and _index(model, (s, b)) is not None]
        strengths = {p: alpha for p in pairs}
        if config is not None:
            fit = stats.fit
            ranges = {b[0]: (fit.lo[b[0]], fit.hi[b[0]]) for _, b in pairs}
            strengths = choose_strengths(
                model, data, pairs, lambda p, a: _column_scales(model, p, fit, a), ranges,
                config, num_samples, held_out=stats.batches > 1)
    finally:
        model.train(was_training)
    for pair, a in strengths.items():
        if a > 0:
            s, index = _pair_scales(model, pair, stats.all, a)
            _apply(model, pair[0], pair[1], s, index)
    report = SmoothReport(source=source,
                          mappings=[p for p in pairs if strengths[p] > 0],
                          strengths={p[0]: a for p, a in strengths.items()})
    covered = set(itertools.chain.from_iterable(b for _, b in pairs))
    report.unmapped = [n for n in layers if n not in covered]
    return report


def _collect(model: nn.Module, data: Iterable[Any], num_samples: int | None,
             ) -> tuple[_Stats, Any]:
    """The statistics pass; returns the stats and the first batch (None if there was none)."""
    linears = [n for n, m in model.named_modules()
               if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"]
    stats = _Stats(model, linears, track_norms=_model_key(model) not in MAPPINGS)
    device = next(iter(model.parameters()), torch.zeros(0)).device
    first_batch, samples = None, 0
    try:
        with torch.inference_mode():
            for i, item in enumerate(data):
                item = to_device(item, device)
                first_batch = item if first_batch is None else first_batch
                run_batch(model, item, "calibration", i)
                stats.end_batch()
                samples += batch_size(item)
                if num_samples is not None and samples >= num_samples:
                    break
    finally:
        stats.remove()
    return stats, first_batch


def _pairs(model: nn.Module, stats: _Stats, first_batch: Any,
           ) -> tuple[list[tuple[str, tuple[str, ...]]], str]:
    """The (smooth, balance) pairs from the registry, else discovered and verified."""
    pairs = _registry_pairs(model)
    if pairs is not None:
        return pairs, "registry"
    if first_batch is None:
        return [], "structure"
    return _verified(model, _discovered_pairs(stats), first_batch), "structure"


def _index(model: nn.Module, pair: tuple[str, tuple[str, ...]]) -> torch.Tensor | None:
    first = model.get_submodule(pair[1][0])
    return channel_index(model, _out_channels(model.get_submodule(pair[0])),
                         int(first.weight.shape[_in_axis(first)]))


def _pair_scales(model: nn.Module, pair: tuple[str, tuple[str, ...]], stats: _Ranges,
                 alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A pair's scales per smoothed output channel, and the column -> channel index."""
    index = _index(model, pair)
    assert index is not None  # pairs that do not line up were dropped before
    mods = [model.get_submodule(b) for b in pair[1]]
    s = smoothing_scales(stats.absmax(pair[1][0]).to(torch.float64), [m.weight for m in mods],
                         [_in_axis(m) for m in mods], alpha, index)
    return s.to(mods[0].weight.device), index


def _column_scales(model: nn.Module, pair: tuple[str, tuple[str, ...]], stats: _Ranges,
                   alpha: float) -> torch.Tensor:
    """The scale of each balance input column at ``alpha`` (ones at 0: not smoothed)."""
    if alpha == 0:
        return torch.ones_like(stats.lo[pair[1][0]])
    s, index = _pair_scales(model, pair, stats, alpha)
    return s[index.to(s.device)]
