"""``mono-quant export ID DIR``: a folder to serve an artifact from (weights, config,
tokenizer files when the model source had them, a model card)."""

from __future__ import annotations

import argparse

from mono_quant.scheduler.cliutil import HelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write a folder for serving an artifact (weights, config, tokenizer, card)",
        formatter_class=HelpFormatter,
        epilog="example:\n  mono-quant export 17 serve/llama-w8 && ls serve/llama-w8\n",
    )
    p.add_argument("id", metavar="ID", help="artifact id (see `mono-quant catalog list`)")
    p.add_argument("dir", metavar="DIR", help="folder to create (must be absent or empty)")
    p.set_defaults(handler=run_export)


def _source_dir(model_source: str):
    """The folder of an ``hf:`` model source, if that is what the job quantized."""
    from pathlib import Path

    if not model_source.startswith("hf:"):
        return None
    target = model_source[3:].split("?", 1)[0].split("@", 1)[0]
    folder = Path(target)
    return folder if folder.is_dir() else None


def run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mono_quant.catalog import Catalog, artifact_path, get_artifact
    from mono_quant.io.export import export_folder
    from mono_quant.io.store import local_source
    from mono_quant.quant.info import QuantizationInfo
    from mono_quant.scheduler.resolve import resolve_artifact_id

    catalog = Catalog()
    catalog.require_schema()
    with catalog.begin() as session:
        artifact = get_artifact(session, resolve_artifact_id(session, args.id))
        path, info_dict = artifact_path(artifact), artifact.info
        source, sha, job_name = artifact.model_source, artifact.sha256, artifact.job.name
        artifact_id = artifact.id
    catalog.dispose()
    info = QuantizationInfo.from_dict(info_dict)
    with local_source(path) as local:  # an object store's artifact: a cached download
        files = export_folder(local, Path(args.dir), info, source_dir=_source_dir(source),
                              title=f"{job_name} (artifact {artifact_id})", source=source,
                              sha256=sha)
    print(f"exported artifact {artifact_id} to {Path(args.dir).resolve()}: {', '.join(files)}")
    return 0
