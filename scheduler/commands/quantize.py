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
from mono_quant.pipeline.spec import PIPELINES
from mono_quant.quant.qconfig import GRANULARITIES, MODES, OBSERVERS, WEIGHT_ALGORITHMS
from mono_quant.quant.specs import SCHEMES
from mono_quant.scheduler.cliutil import HelpFormatter, add_deprecated_alias

_QUANTIZE_EPILOG = """examples:
  mono-quant quantize 'factory:mono_quant.demo_models:mlp' -o mlp.safetensors
  mono-quant quantize hf:./tiny-llama -o tiny-w8a8 --artifact-format compressed-tensors \\
      --mode static --calibration text:calib.txt --samples 32 --exclude lm_head
  mono-quant quantize hf:./tiny-llama -o tiny.safetensors --stream
"""


def register(sub: argparse._SubParsersAction) -> None:
    _register_quantize(sub)
    _register_inspect(sub)


def _register_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize", help="quantize one model locally and write an artifact",
        description="Quantize one model locally, write the artifact, reload it and report.",
        epilog=_QUANTIZE_EPILOG, formatter_class=HelpFormatter,
    )
    p.add_argument("source", help="hf:PATH or factory:MODULE:CALLABLE[?key=value&weights=PATH]")
    p.add_argument("-o", "--output", required=True,
                   help="artifact path: .safetensors, .pt/.pth, or a folder for "
                        "--format compressed-tensors")
    _add_config_options(p)
    p.add_argument("--format", "--artifact-format", dest="format", choices=FORMATS,
                   help="artifact format (default: from the output's extension)")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="hf: sources only: quantize the safetensors weights tensor by tensor "
                        "without building the model (weight-only, .safetensors output); "
                        "--no-stream: always build the model; neither (default): stream "
                        "where that writes the same artifact (verified model families)")
    p.add_argument("--pipeline", choices=PIPELINES, default="auto",
                   help="sequential: block by block from an hf: folder's safetensors (bounded "
                        "memory, resumable); in_memory: the whole model; auto (default): "
                        "sequential when the model does not fit (docs/sequential.md)")
    p.add_argument("--max-shard-size", metavar="SIZE",
                   help="shard the weights into files of at most SIZE (e.g. 5GB, 500MiB, or "
                        "bytes) with model.safetensors.index.json; a .safetensors output "
                        "becomes a folder of that name")
    p.add_argument("--strict", action="store_true",
                   help="refuse a compressed-tensors artifact vLLM's int8 kernels cannot serve "
                        "(default: a warning)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars, no third-party progress or warnings")
    p.set_defaults(handler=run_quantize)


def _add_config_options(p: argparse.ArgumentParser) -> None:
    """The QuantConfig, calibration and evaluation options of ``quantize``."""
    p.add_argument("--scheme", choices=SCHEMES, default="symmetric", help="int8 scheme")
    p.add_argument("--granularity", choices=GRANULARITIES, default="per_channel",
                   help="one scale per tensor, output channel or group")
    p.add_argument("--group-size", type=int, help="values per group for per_group (default 128)")
    p.add_argument("--mode", choices=MODES, default="weight_only",
                   help="weight_only (W8A16) or static (W8A8, needs --calibration)")
    p.add_argument("--weight-observer", choices=OBSERVERS, default="minmax",
                   help="how weight ranges are measured")
    add_deprecated_alias(p, "--observer", "--weight-observer")
    p.add_argument("--activation-observer", choices=OBSERVERS, default="minmax",
                   help="how activation ranges are measured (static mode)")
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
    p.add_argument("--gptq-damping", type=float, default=0.01, metavar="F",
                   help="GPTQ: damping added to the Hessian diagonal, as a fraction of its mean")
    p.add_argument("--gptq-block-size", type=int, default=128, metavar="N",
                   help="GPTQ: columns quantized per block")
    p.add_argument("--gptq-act-order", action="store_true",
                   help="GPTQ: quantize columns in order of decreasing Hessian diagonal")
    p.add_argument("--target", action="append", default=[], metavar="METRIC=VALUE",
                   help="accuracy target, e.g. output_cosine=0.999 (repeatable; also "
                        "output_sqnr_db, perplexity_increase)")
    p.add_argument("--evaluation", metavar="text:FILE[?context=N]",
                   help="measure perplexity (float and quantized) of a causal LM on a text")


def _register_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="print an artifact's QuantizationInfo (a path or an id)",
                       formatter_class=HelpFormatter,
                       epilog="examples:\n  mono-quant inspect mlp.safetensors\n"
                              "  mono-quant inspect 17 --json   # artifact 17 of the catalog\n")
    p.add_argument("artifact", help=".safetensors, .pt/.pth, a compressed-tensors folder, or "
                                    "an artifact id of the catalog")
    p.add_argument("--json", action="store_true", help="the QuantizationInfo JSON, as stored")
    p.add_argument("--url", help="catalog URL for an artifact id (default: see `where`)")
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
        mode=args.mode, weight_observer=args.weight_observer,
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
    for warning in m.get("warnings", []):
        _line("warning", warning)
    _line("wrote", f"{path} ({fmt})")


def _factories():
    """The operator's allow-list of factory modules (MONO_QUANT_ALLOWED_FACTORIES)."""
    from mono_quant.config import get_settings
    from mono_quant.pipeline.allowlist import FactoryAllowList

    return FactoryAllowList(get_settings().allowed_factories)


def serveable(verdict, fmt: str, strict: bool, where: str = "") -> None:
    """A compressed-tensors artifact vLLM cannot serve: BadConfigError with ``--strict``,
    else a warning on stderr."""
    from mono_quant import BadConfigError

    if fmt != "compressed-tensors" or verdict.serveable_by == "vllm":
        return
    message = f"{where}not serveable by vLLM: {verdict.reason}"
    if strict:
        raise BadConfigError(message + " (--strict)")
    print(f"warning: {message}", file=sys.stderr)


def _spec(args: argparse.Namespace):
    """The flags as the typed JobSpec every caller of the pipeline takes."""
    from mono_quant.io import detect_format
    from mono_quant.pipeline import JobSpec, parse_calibration_source, parse_model_source
    from mono_quant.pipeline.evaluation import parse_evaluation_source

    allow = _factories()
    return JobSpec(
        model=parse_model_source(args.source, factories=allow),
        config=_config(args),
        format=detect_format(args.output, args.format),
        calibration=parse_calibration_source(args.calibration, factories=allow)
        if args.calibration else None,
        samples=args.samples,
        stream=args.stream,
        max_shard_size=args.max_shard_size,
        pipeline=args.pipeline,
        evaluation=parse_evaluation_source(args.evaluation) if args.evaluation else None,
    )


def run_quantize(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from mono_quant.io.serveability import Serveability, check_scheme
    from mono_quant.pipeline import run_pipeline
    from mono_quant.scheduler.cliutil import quiet_third_party

    quiet_third_party(quiet=args.quiet)
    spec = _spec(args)
    serveable(check_scheme(spec.config, spec.format), spec.format, args.strict)

    def announce(stage: str, **extra: Any) -> None:
        if not args.quiet:  # which path quantizes: streamed, streamed (auto), sequential
            path = f" ({extra['pipeline']})" if "pipeline" in extra else ""
            print(f"{stage}{path} ...", file=sys.stderr)

    from mono_quant.config import get_settings

    result = run_pipeline(spec, args.output, on_stage=announce, progress=not args.quiet,
                          factories=_factories(),
                          activation_offload_bytes=get_settings().activation_offload_bytes)
    m = result.info.metrics
    verdict = Serveability(m.get("serveable_by", "vllm"), m.get("serveable_reason", ""))
    if args.strict and spec.format == "compressed-tensors" and verdict.serveable_by != "vllm":
        shutil.rmtree(Path(result.path), ignore_errors=True)  # the layer shapes, known now
        serveable(verdict, spec.format, strict=True)
    _report(args.source, result.info, result.path, spec.format, m["reload_check"])
    return 0


def _artifact_arg(text: str, url: str | None = None) -> str:
    """A path as given, or the catalog path of an artifact id (a path that exists wins)."""
    from pathlib import Path

    if not text.isdigit() or Path(text).exists():
        return text
    from mono_quant.catalog import Catalog, artifact_path, get_artifact
    from mono_quant.scheduler.resolve import resolve_artifact_id

    catalog = Catalog(url)
    catalog.require_schema()
    with catalog.begin() as session:
        path = artifact_path(get_artifact(session, resolve_artifact_id(session, text)))
    catalog.dispose()
    return str(path)


def run_inspect(args: argparse.Namespace) -> int:
    from mono_quant.io import detect_format, read_info
    from mono_quant.io.store import size_of

    args.artifact = _artifact_arg(args.artifact, args.url)
    info = read_info(args.artifact)
    if args.json:
        print(info.to_json())
        return 0
    cfg, m = info.config, info.metrics
    print(f"artifact {args.artifact} ({detect_format(args.artifact)}, "
          f"{_mib(size_of(args.artifact))})")
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
