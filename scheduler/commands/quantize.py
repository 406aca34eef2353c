"""``mono-quant quantize`` (one model, locally) and ``mono-quant inspect`` (an artifact).

Examples::

    mono-quant quantize 'factory:mono_quant.demo_models:mlp' -o mlp.safetensors \\
        --mode static --calibration factory:mono_quant.demo_models:vector_batches --samples 64
    mono-quant quantize hf:./tiny-llama -o tiny-w8a8 --format compressed-tensors \\
        --mode static --calibration text:calib.txt --samples 32 --exclude lm_head
    mono-quant quantize hf:./tiny-llama -o tiny.safetensors --stream
    mono-quant inspect mlp.safetensors --json

The report goes to stdout, progress bars to stderr. Exit codes: 0 ok, 2 bad input or
configuration, 1 other failures (including a reloaded artifact that does not reproduce the
quantized model's outputs).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

# Torch-free modules: `mono-quant --help` stays fast.
from mono_quant.io.layout import FORMATS
from mono_quant.quant.qconfig import GRANULARITIES, MODES, OBSERVERS, WEIGHT_ALGORITHMS
from mono_quant.quant.specs import SCHEMES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize", help="quantize one model locally and write an artifact",
        description="Quantize one model locally, write the artifact, reload it and report.",
    )
    p.add_argument("source", help="hf:PATH or factory:MODULE:CALLABLE[?key=value&weights=PATH]")
    p.add_argument("-o", "--output", required=True,
                   help="artifact path: .safetensors, .pt/.pth, or a folder for "
                        "--format compressed-tensors")
    p.add_argument("--scheme", choices=SCHEMES, default="symmetric")
    p.add_argument("--granularity", choices=GRANULARITIES, default="per_channel")
    p.add_argument("--group-size", type=int, help="values per group for per_group (default 128)")
    p.add_argument("--mode", choices=MODES, default="weight_only")
    p.add_argument("--observer", choices=OBSERVERS, default="minmax", help="weight observer")
    p.add_argument("--activation-observer", choices=OBSERVERS, default="minmax")
    p.add_argument("--calibration", metavar="SOURCE",
                   help="factory:MODULE:CALLABLE, tensors:FILE.safetensors or text:FILE.txt")
    p.add_argument("--samples", type=int, help="calibration samples to use (default: all)")
    p.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help="layers to quantize: class name, name glob or re:REGEX (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="layers to keep in float (repeatable; wins over --include)")
    p.add_argument("--smoothquant", type=float, metavar="ALPHA",
                   help="SmoothQuant migration strength in (0, 1) for W8A8 (static/dynamic)")
    p.add_argument("--weight-algorithm", choices=WEIGHT_ALGORITHMS, default="rtn",
                   help="weight rounding: rtn, or gptq (needs --calibration)")
    p.add_argument("--gptq-damping", type=float, default=0.01, metavar="F")
    p.add_argument("--gptq-block-size", type=int, default=128, metavar="N")
    p.add_argument("--gptq-act-order", action="store_true")
    p.add_argument("--target", action="append", default=[], metavar="METRIC=VALUE",
                   help="accuracy target, e.g. output_cosine=0.999 (repeatable; also "
                        "output_sqnr_db, perplexity_increase)")
    p.add_argument("--evaluation", metavar="text:FILE[?context=N]",
                   help="measure perplexity (float and quantized) of a causal LM on a text")
    p.add_argument("--format", choices=FORMATS, help="default: from the output's extension")
    p.add_argument("--stream", action="store_true",
                   help="hf: sources only: quantize the safetensors weights tensor by tensor "
                        "without building the model (weight-only, .safetensors output)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run_quantize)

    p = sub.add_parser("inspect", help="print an artifact's QuantizationInfo")
    p.add_argument("artifact", help=".safetensors, .pt/.pth or a compressed-tensors folder")
    p.add_argument("--json", action="store_true", help="the QuantizationInfo JSON, as stored")
    p.set_defaults(handler=run_inspect)


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def _line(label: str, value: str) -> None:
    print(f"  {label:<12} {value}")


def _targets(items: list[str]) -> dict[str, float] | None:
    from mono_quant import BadConfigError

    target = {}
    for item in items:
        metric, sep, value = item.partition("=")
        try:
            target[metric.strip()] = float(value)
        except ValueError as e:
            raise BadConfigError(
                f"--target {item!r}: expected METRIC=NUMBER, e.g. output_cosine=0.999"
            ) from e
        if not sep:
            raise BadConfigError(f"--target {item!r}: expected METRIC=NUMBER")
    return target or None


def _config(args: argparse.Namespace):
    from mono_quant import QuantConfig

    return QuantConfig(
        scheme=args.scheme, granularity=args.granularity, group_size=args.group_size,
        mode=args.mode, weight_observer=args.observer,
        activation_observer=args.activation_observer, include=args.include,
        exclude=args.exclude, smoothquant=args.smoothquant,
        weight_algorithm=args.weight_algorithm, gptq_damping=args.gptq_damping,
        gptq_block_size=args.gptq_block_size, gptq_act_order=args.gptq_act_order,
        target=_targets(args.target),
    )


def _report(source: str, info, path, fmt: str, reload: str) -> None:
    from mono_quant.io import size_path

    m = info.metrics
    cfg = info.config
    print(f"mono-quant quantize: {source}")
    group = f" (group {cfg.group_size})" if cfg.group_size else ""
    extra = "".join([
        f", {cfg.weight_algorithm}" if cfg.weight_algorithm != "rtn" else "",
        f", smoothquant {cfg.smoothquant}" if cfg.smoothquant is not None else "",
    ])
    _line("config", f"{cfg.scheme} {cfg.granularity}{group} {cfg.mode} "
                    f"(weights: {cfg.weight_observer}{extra})")
    _line("layers", f"{m['layers_quantized']} of {m['layers_total']} quantized")
    _line("weight SQNR", f"{m['weight_sqnr_db']:.2f} dB overall, "
                         f"{m['weight_sqnr_db_min']:.2f} dB worst layer")
    if "output_cosine" in m:
        _line("output", f"cosine {m['output_cosine']:.6f}, SQNR {m['output_sqnr_db']:.2f} dB "
                        f"on {m['eval_batches']} batch(es)")
    else:
        _line("output", "not measured (no calibration data: pass --calibration)")
    if "perplexity_quant" in m:
        _line("perplexity", f"{m['perplexity_fp']:.4f} float -> {m['perplexity_quant']:.4f} "
                            f"int8 (+{m['perplexity_increase']:.4f})")
    if m.get("accuracy_target"):
        kept = m["accuracy_target"]["excluded_layers"]
        _line("target", f"met; {len(kept)} layer(s) kept in float: {', '.join(kept) or '-'}")
    _line("size", f"{_mib(m['size_bytes_fp'])} float -> {_mib(m['size_bytes_quant'])} int8 "
                  f"({m['compression_ratio']:.2f}x); artifact {_mib(size_path(path))} on disk")
    _line("reload", reload)
    _line("wrote", f"{path} ({fmt})")


def run_quantize(args: argparse.Namespace) -> int:
    from mono_quant import (
        BadInputError,
        quantize_checkpoint,
        quantize_model,
        save_model,
    )
    from mono_quant.io import detect_format, parse_calibration_source, parse_model_source

    config = _config(args)
    if args.samples is not None and not args.calibration:
        raise BadInputError("--samples counts calibration samples: give --calibration too")
    fmt = detect_format(args.output, args.format)
    source = parse_model_source(args.source)
    if args.stream:
        if source.scheme != "hf" or args.calibration:
            raise BadInputError(
                "--stream reads an hf: folder's safetensors weights (weight-only, no "
                "--calibration)"
            )
        if fmt != "safetensors":
            raise BadInputError("--stream writes a .safetensors file")
        info = quantize_checkpoint(source.target, args.output, config, progress=not args.quiet)
        _report(args.source, info, args.output, fmt, "not run (--stream builds no model)")
        return 0
    print(f"loading {source} ...", file=sys.stderr)
    model = source.load()
    batches: list[Any] = []
    if args.calibration:
        batches = parse_calibration_source(args.calibration).load(source, args.samples)
    evaluation = {}
    if args.evaluation:
        from mono_quant.io.evaluation import parse_evaluation_source

        ev = parse_evaluation_source(args.evaluation)
        evaluation = {"eval_tokens": ev.token_ids(source.tokenizer()),
                      "eval_context": ev.context}
    # a batch the model rejects is a BadInputError from quantize_model, naming the batch
    qmodel, info = quantize_model(model, config, batches or None, num_samples=args.samples,
                                  progress=not args.quiet, **evaluation)
    path = save_model(qmodel, args.output, info, format=fmt)
    from mono_quant.validate.reload import reload_check

    # the float model is no longer needed: the artifact is rebuilt into it
    reload = reload_check(path, model, qmodel, batches[0] if batches else None)
    _report(args.source, info, path, fmt, reload)
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from mono_quant.io import detect_format, read_info, size_path

    info = read_info(args.artifact)
    if args.json:
        print(info.to_json())
        return 0
    cfg, m = info.config, info.metrics
    print(f"artifact {args.artifact} ({detect_format(args.artifact)}, "
          f"{_mib(size_path(args.artifact))})")
    _line("format", f"mono-quant QuantizationInfo v{info.VERSION}, dtype {info.dtype}")
    group = f", group_size={cfg.group_size}" if cfg.group_size else ""
    _line("config", f"scheme={cfg.scheme}, granularity={cfg.granularity}{group}, "
                    f"mode={cfg.mode}, weight_observer={cfg.weight_observer}")
    if cfg.mode == "static":
        _line("activations", f"{cfg.activation_scheme} per_tensor, observer "
                             f"{cfg.activation_observer}; {info.calibration_samples} "
                             "calibration samples")
    if cfg.include or cfg.exclude:
        _line("patterns", f"include={list(cfg.include)} exclude={list(cfg.exclude)}")
    shown = ", ".join(info.selected_layers[:6])
    more = f" (+{len(info.selected_layers) - 6} more)" if len(info.selected_layers) > 6 else ""
    _line("layers", f"{len(info.selected_layers)} quantized: {shown}{more}")
    for key, label in (("weight_sqnr_db", "weight SQNR"), ("output_cosine", "out cosine"),
                       ("output_sqnr_db", "output SQNR"), ("compression_ratio", "compression")):
        if isinstance(m.get(key), (int, float)):
            _line(label, f"{m[key]:.6g}")
    _line("software", ", ".join(f"{k} {v}" for k, v in sorted(info.library_versions.items())))
    return 0
