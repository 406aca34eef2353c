"""``mono-quant demo``: quantize the built-in demo models and print the report."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from mono_quant.scheduler.cliutil import HelpFormatter

    p = sub.add_parser("demo", help="quantize the demo models locally and print a report",
                       formatter_class=HelpFormatter,
                       epilog="example:\n  mono-quant demo --quiet\n")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from mono_quant import QuantConfig, demo_models, quantize_model

    cases = [
        ("mlp", demo_models.mlp(), demo_models.vector_batches(), QuantConfig()),
        ("mlp", demo_models.mlp(), demo_models.vector_batches(),
         QuantConfig(scheme="asymmetric", granularity="per_group", group_size=64)),
        ("mlp", demo_models.mlp(), demo_models.vector_batches(), QuantConfig(mode="static")),
        ("cnn", demo_models.cnn(), demo_models.image_batches(), QuantConfig(mode="static")),
    ]
    header = (
        f"{'model':6} {'scheme':10} {'granularity':12} {'mode':11} {'layers':>6} "
        f"{'w-SQNR dB':>9} {'min dB':>7} {'out cos':>8} {'size fp→q (KiB)':>16} {'ratio':>5}"
    )
    print(header)
    print("-" * len(header))
    for name, model, data, config in cases:
        _, info = quantize_model(model, config, data, progress=not args.quiet)
        m = info.metrics
        print(
            f"{name:6} {info.scheme:10} {info.granularity:12} {info.mode:11} "
            f"{m['layers_quantized']:>6} {m['weight_sqnr_db']:>9.2f} "
            f"{m['weight_sqnr_db_min']:>7.2f} "
            f"{m.get('output_cosine', float('nan')):>8.5f} "
            f"{m['size_bytes_fp'] / 1024:>7.0f}→{m['size_bytes_quant'] / 1024:<8.0f} "
            f"{m['compression_ratio']:>5.2f}"
        )
    return 0
