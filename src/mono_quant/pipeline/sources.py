"""Model and calibration sources: what a job points at, as a CLI string or a manifest mapping.

Grammar (strings; the manifest mapping form is shown on the right)::

    MODEL
      hf:PATH                          {hf: PATH}
      hf:ORG/NAME[@REVISION]           {hf: ORG/NAME@REVISION}   (local HF cache only)
      factory:MODULE:CALLABLE[?ARGS]   {factory: MODULE:CALLABLE, kwargs: {...}, weights: PATH}
    CALIBRATION
      factory:MODULE:CALLABLE[?ARGS]   {factory: MODULE:CALLABLE, kwargs: {...}}
      tensors:PATH[?batch_size=N]      {tensors: PATH, batch_size: N}
      text:PATH[?batch_size=N&max_length=N]   {text: PATH, batch_size: N, max_length: N}
      PATH.safetensors, PATH.txt       shorthands for tensors:PATH and text:PATH

``ARGS`` is ``key=value`` pairs joined by ``&`` (quote the whole source in a shell). A value is
percent-decoded, then read as JSON when it parses (``128``, ``0.5``, ``true``, ``null``,
``"text"``, ``[1,2]``) and kept as a plain string otherwise. For a model factory the key
``weights`` is reserved: a ``.safetensors`` or ``.pt`` state dict loaded strictly after the
call (``.pt`` only with ``weights_only=True``).

* ``hf:`` is a local Hugging Face folder (``config.json`` + safetensors weights), loaded with
  transformers (the ``hf`` extra) from local files only; its tokenizer tokenizes ``text:``
  calibration files. A target that is not an existing folder and reads ``org/name[@rev]`` is
  a hub id, resolved from the local Hugging Face cache (:mod:`mono_quant.pipeline.hub_cache`).
* ``factory:`` **imports and runs code** by design: it is trusted configuration, like a
  Python entry point. Services pass a :class:`~mono_quant.pipeline.allowlist.FactoryAllowList`
  (``factories=``) so only modules the operator allowed are ever imported.
* ``tensors:`` files hold one tensor ``[N, ...]`` (batches are slices of it, passed
  positionally) or several tensors sharing ``N`` (batches are dicts of keyword arguments).

Paths are made absolute (against ``base_dir`` or the working directory) when parsed, so
:meth:`ModelSource.canonical` — the input of idempotency keys — does not depend on where a
job runs. It does not hash file contents.

Example:
    >>> src = parse_model_source("factory:mono_quant.demo_models:mlp?hidden=32&seed=1")
    >>> src.canonical()["kwargs"], src.canonical()["target"]
    ({'hidden': 32, 'seed': 1}, 'mono_quant.demo_models:mlp')
    >>> same = {"factory": "mono_quant.demo_models:mlp", "kwargs": {"seed": 1, "hidden": 32}}
    >>> src == parse_model_source(same)
    True
    >>> type(src.load()).__name__
    'Sequential'
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mono_quant.errors import BadConfigError, BadInputError, MonoQuantError
from mono_quant.io.store import is_store_url, split_url
from mono_quant.pipeline._grammar import (
    TARGET,
    Source,
    call_factory,
    display_text,
    flat_members,
    import_target,
    kwargs_of,
    parse_parts,
    resolve_path,
    scalar_json,
)

if TYPE_CHECKING:
    from torch import nn

    from mono_quant.pipeline.allowlist import FactoryAllowList

__all__ = [
    "CalibrationSource",
    "ModelSource",
    "parse_calibration_source",
    "parse_model_source",
]

MODEL_SCHEMES = ("hf", "factory")
CALIBRATION_SCHEMES = ("factory", "tensors", "text")
#: Defaults of the calibration file options.
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_LENGTH = 512
_LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError,
                ImportError)


@dataclass(frozen=True, eq=True)
class ModelSource(Source):
    """Where a model comes from: ``hf:`` folder or ``factory:`` callable (+ ``weights``)."""

    SCHEMES = MODEL_SCHEMES
    scheme: str
    target: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    weights: str | None = None
    text: str = field(default="", compare=False)

    __hash__ = Source.__hash__

    def _options(self) -> dict[str, Any]:
        return {"weights": self.weights}

    @property
    def folder(self) -> str:
        """An ``hf:`` source's folder: the path, a hub id's cached snapshot, or the cached
        download of an object store's folder (``hf:s3://bucket/models/x``)."""
        if is_store_url(self.target):
            store, key = split_url(self.target)
            return str(store.local(key))
        if os.path.isabs(self.target):
            return self.target
        from mono_quant.pipeline.hub_cache import hub_id, resolve_snapshot

        repo, revision = hub_id(self.target) or (self.target, None)
        return str(resolve_snapshot(repo, revision, self.text))

    def check(self, factories: FactoryAllowList | None = None) -> None:
        """Cheap checks without building the model: paths exist, the factory imports (only
        if ``factories`` allows its module)."""
        if self.scheme == "hf" and is_store_url(self.target):  # no download to check it
            store, key = split_url(self.target)
            if not store.exists(f"{key}/config.json"):
                raise BadInputError(f"{self.text}: {self.target} has no config.json (expected "
                                    "a Hugging Face model folder written by save_pretrained)")
        elif self.scheme == "hf":
            folder = self.folder
            if not Path(folder).is_dir():
                from mono_quant.pipeline.hub_cache import hub_id, resolve_snapshot

                hub = hub_id(self.text.partition(":")[2])
                if hub is not None:  # neither a folder nor cached: say where both were looked
                    resolve_snapshot(*hub, self.text)
                raise BadInputError(f"{self.text}: no such folder {folder}")
            if not (Path(folder) / "config.json").is_file():
                raise BadInputError(
                    f"{self.text}: {folder} has no config.json (expected a Hugging Face "
                    "model folder written by save_pretrained)"
                )
        else:
            import_target(self.target, self.text, factories)
        if self.weights is not None and not Path(self.weights).is_file():
            raise BadInputError(f"{self.text}: weights file {self.weights} does not exist")

    def load(self, factories: FactoryAllowList | None = None) -> nn.Module:
        """Build the model (in eval mode); a factory runs only if ``factories`` allows it."""
        from torch import nn

        self.check(factories)
        if self.scheme == "hf":
            model = _load_hf(self)
        else:
            model = call_factory(self.target, dict(self.kwargs), self.text, factories)
            if not isinstance(model, nn.Module):
                raise BadInputError(
                    f"{self.text}: the factory returned a {type(model).__name__}, expected a "
                    "torch.nn.Module"
                )
        if self.weights is not None:
            from mono_quant.io._checks import load_state_dict_strict
            from mono_quant.io.formats import load_model

            load_state_dict_strict(model, load_model(self.weights),
                                   f"{self.text}: weights {self.weights}")
        return model.eval()

    def tokenizer(self) -> Any:
        """The tokenizer saved in an ``hf:`` folder."""
        if self.scheme != "hf":
            raise BadInputError(f"{self.text}: only hf: model sources have a tokenizer")
        AutoTokenizer = _transformers(self.text).AutoTokenizer
        try:
            tok = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
        except _LOAD_ERRORS as e:
            raise BadInputError(f"{self.text}: cannot load the tokenizer: {e}") from e
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise BadInputError(
                    f"{self.text}: the tokenizer has neither a pad nor an eos token to pad "
                    "calibration batches with"
                )
            tok.pad_token = tok.eos_token
        return tok


def _transformers(text: str) -> Any:
    try:
        import transformers
    except ImportError as e:
        raise BadConfigError(
            f"{text}: hf: sources need transformers: pip install 'mono-quant[hf]'"
        ) from e
    return transformers


def _refuse_pickles(source: ModelSource) -> None:
    """An hf: folder is read through its safetensors weights only: a pickle checkpoint
    (``pytorch_model.bin``) could run code while it loads, and is refused by name."""
    folder = Path(source.folder)
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir()
                     if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
    if pickles:
        raise BadInputError(
            f"{source.text}: {folder / pickles[0]} is a pickle checkpoint, which mono-quant "
            "does not load (pickles can run code); convert the folder to safetensors "
            "(model.save_pretrained(path, safe_serialization=True))"
        )


def _load_hf(source: ModelSource) -> nn.Module:
    transformers = _transformers(source.text)
    folder = source.folder
    _refuse_pickles(source)
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        arch = (getattr(config, "architectures", None) or [None])[0]
        cls = getattr(transformers, arch, None) if arch else None
        cls = cls or transformers.AutoModel
        return cls.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    except _LOAD_ERRORS as e:
        raise BadInputError(f"{source.text}: transformers could not load the model: {e}") from e
    except Exception as e:  # transformers' own error types; the rest is not the input's fault
        raise _hf_load_error(e, source.text, Path(folder)) from e


#: Phrases of transformers' config validators -> the config.json fields they are about.
_CONFIG_FIELDS = {"hidden size": "hidden_size", "attention heads": "num_attention_heads",
                  "key value heads": "num_key_value_heads", "head dim": "head_dim"}


def _hf_load_error(e: Exception, text: str, folder: Path) -> Exception:
    """A clear error for what transformers raises on a bad folder, or ``e`` itself."""
    import pickle

    if isinstance(e, pickle.UnpicklingError):
        files = sorted(p.name for p in folder.glob("*.bin")) or ["the weights"]
        return BadInputError(
            f"{text}: {folder / files[0]}: refused: the pickle needs code outside torch's "
            "weights_only allow-list (it was not run); convert the weights to safetensors"
        )
    if any(c.__name__ == "StrictDataclassError" for c in type(e).__mro__):
        detail = " ".join(str(e).split())
        fields = [f for phrase, f in _CONFIG_FIELDS.items() if phrase in detail.lower()]
        named = f" (fields {', '.join(fields)})" if fields else ""
        return BadConfigError(f"{text}: {folder / 'config.json'}{named} is invalid: {detail}")
    return e


def parse_model_source(
    value: str | Mapping[str, Any], *, base_dir: str | os.PathLike[str] | None = None,
    factories: FactoryAllowList | None = None,
) -> ModelSource:
    """Parse ``hf:PATH`` / ``factory:MODULE:CALLABLE?k=v&weights=PATH`` or their mapping.

    With ``factories``, a factory outside the allow-list is a BadConfigError (nothing is
    imported while parsing)."""
    if type(value) is dict and value.keys() <= _FACTORY_ONLY:
        source = _factory_mapping(value, factories)
        if source is not None:
            return source
    scheme, target, options, text = parse_parts(value, "model", MODEL_SCHEMES)
    mapping = not isinstance(value, str)
    if scheme == "hf":
        if options:
            raise BadInputError(f"{text}: hf: sources take no arguments ({', '.join(options)})")
        if is_store_url(target):  # a folder in an object store: read when loaded
            return ModelSource("hf", target.rstrip("/"), text=text)
        path = resolve_path(target, base_dir, text, "hf:")
        if not os.path.isdir(path) and isinstance(target, str):
            from mono_quant.pipeline.hub_cache import in_cache

            if in_cache(target):  # not a folder but a cached hub id (or an explicit @rev)
                return ModelSource("hf", target, text=text)
        return ModelSource("hf", path, text=text)
    kwargs = kwargs_of(options, {"weights"}, text, mapping)
    weights = options.get("weights")
    if weights is not None:
        weights = resolve_path(weights, base_dir, text, "weights")
    if not isinstance(target, str) or not TARGET.match(target):
        raise BadInputError(f"{text}: factory target {target!r} is not 'package.module:callable'")
    if factories is not None:
        factories.check_target(target, text)
    return ModelSource("factory", target, tuple(sorted(kwargs.items())), weights, text=text)


#: The keys of the mapping :func:`_factory_mapping` reads (a matrix's generated models).
_FACTORY_ONLY = frozenset({"factory", "kwargs"})


def _factory_mapping(value: dict[str, Any], factories: FactoryAllowList | None
                     ) -> ModelSource | None:
    """``{"factory": TARGET, "kwargs": {...}}`` parsed straight to its source: what the general
    path (:func:`parse_parts`, :func:`kwargs_of`) builds for it, without its generic steps (a
    generated manifest holds thousands). None for anything it would refuse or treat apart
    (the general path then says why)."""
    target, kwargs = value.get("factory"), value.get("kwargs", {})
    if (type(target) is not str or type(kwargs) is not dict or not TARGET.match(target)
            or not all(type(k) is str for k in kwargs)):
        return None
    items = tuple(sorted(kwargs.items()))
    members = flat_members(items)  # also the catalog's text of the arguments
    if members is None:
        text = display_text(value)
    else:  # what display_text writes: "factory" sorts before "kwargs"
        text = "".join(['{"factory": ', scalar_json(target),
                        ', "kwargs": {' + members[1] + "}" if "kwargs" in value else "", "}"])
    if factories is not None:
        factories.check_target(target, text)
    if members is None:
        return ModelSource("factory", target, items, None, text=text)
    # what ModelSource(...) builds, without its checks, which the above made (a known
    # scheme; str keys; JSON scalars) and the frozen dataclass's setattr per field
    source = object.__new__(ModelSource)
    source.__dict__.update(scheme="factory", target=target, kwargs=items, weights=None,
                           text=text)
    source.json_texts(members)  # computed now, from the same members
    return source


@dataclass(frozen=True, eq=True)
class CalibrationSource(Source):
    """Calibration batches: a ``factory:``, a ``tensors:`` file or a ``text:`` file."""

    SCHEMES = CALIBRATION_SCHEMES
    scheme: str
    target: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    batch_size: int | None = None
    max_length: int | None = None
    text: str = field(default="", compare=False)

    __hash__ = Source.__hash__

    def _options(self) -> dict[str, Any]:
        opts = {"batch_size": self.batch_size, "max_length": self.max_length}
        return {k: v for k, v in opts.items() if v is not None}

    def load(self, model_source: ModelSource | None = None, samples: int | None = None,
             factories: FactoryAllowList | None = None):
        """A list of batches holding ``samples`` samples (all when None); a factory runs only
        if ``factories`` allows it."""
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int)
                                    or samples < 1):
            raise BadInputError(f"{self.text}: samples={samples!r}: expected a positive integer")
        import torch
        from torch import nn

        if self.scheme == "factory":
            items = call_factory(self.target, dict(self.kwargs), self.text, factories)
            if isinstance(items, (torch.Tensor, nn.Module)) or not isinstance(items, Iterable):
                raise BadInputError(
                    f"{self.text}: the factory returned a {type(items).__name__}, expected an "
                    "iterable of batches (tensors, tuples or dicts of tensors)"
                )
        elif self.scheme == "tensors":
            items = _tensor_batches(self)
        else:
            items = _text_batches(self, model_source, samples)
        try:
            batches = _take(items, samples, self.text)
        except MonoQuantError:
            raise
        except Exception as e:  # a factory's iterator is user code
            raise BadInputError(
                f"{self.text}: iterating the calibration batches raised {type(e).__name__}: {e}"
            ) from e
        if not batches:
            raise BadInputError(f"{self.text}: no calibration batches")
        return batches


def _take(items: Iterable[Any], samples: int | None, text: str) -> list[Any]:
    import torch

    from mono_quant.quant.calibration import batch_size

    out, seen = [], 0
    for item in items:
        if not isinstance(item, (torch.Tensor, Mapping, tuple, list)):
            raise BadInputError(
                f"{text}: batch {len(out)} is a {type(item).__name__}; expected a tensor, a "
                "tuple of tensors or a dict of tensors"
            )
        n = batch_size(item)
        if samples is not None and seen + n > samples:
            item, n = _head(item, samples - seen), samples - seen
        out.append(item)
        seen += n
        if samples is not None and seen >= samples:
            break
    return out


def _head(item: Any, n: int) -> Any:
    import torch

    if isinstance(item, torch.Tensor):
        return item[:n] if item.ndim >= 2 else item
    if isinstance(item, Mapping):
        return {k: _head(v, n) for k, v in item.items()}
    if isinstance(item, (tuple, list)):
        return type(item)(_head(v, n) for v in item)
    return item


def _tensor_batches(source: CalibrationSource) -> list[Any]:
    from mono_quant.io.formats import read_safetensors

    tensors, _ = read_safetensors(Path(source.target))
    if not tensors:
        raise BadInputError(f"{source.text}: the file holds no tensors")
    sizes = {name: (t.shape[0] if t.ndim else None) for name, t in tensors.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise BadInputError(
            f"{source.text}: every tensor needs the same leading (sample) dimension; got "
            f"{', '.join(f'{k}: {list(t.shape)}' for k, t in tensors.items())}"
        )
    n = next(iter(sizes.values()))
    step = source.batch_size or DEFAULT_BATCH_SIZE
    names = sorted(tensors)
    if len(names) == 1:
        return [tensors[names[0]][i : i + step] for i in range(0, n, step)]
    return [{k: tensors[k][i : i + step] for k in names} for i in range(0, n, step)]


def _text_batches(source: CalibrationSource, model: ModelSource | None, samples: int | None):
    if model is None or model.scheme != "hf":
        raise BadInputError(
            f"{source.text}: text calibration needs an hf: model source (its tokenizer)"
        )
    try:
        lines = [s.strip() for s in Path(source.target).read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError as e:
        raise BadInputError(f"{source.text}: no such file {source.target}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"{source.text}: cannot read {source.target}: {e}") from e
    lines = [s for s in lines if s][:samples]
    tok = model.tokenizer()
    step = source.batch_size or DEFAULT_BATCH_SIZE
    max_length = source.max_length or DEFAULT_MAX_LENGTH
    batches = []
    for i in range(0, len(lines), step):
        enc = tok(lines[i : i + step], padding=True, truncation=True, max_length=max_length,
                  return_tensors="pt")
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return batches


def _positive(value: Any, name: str, text: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInputError(f"{text}: {name}={value!r}: expected a positive integer")
    return value


def parse_calibration_source(
    value: str | Mapping[str, Any], *, base_dir: str | os.PathLike[str] | None = None,
    factories: FactoryAllowList | None = None,
) -> CalibrationSource:
    """Parse ``factory:...`` / ``tensors:PATH`` / ``text:PATH`` (or a bare path) or a mapping;
    a factory outside ``factories`` (when given) is a BadConfigError."""
    scheme, target, options, text = parse_parts(value, "calibration", CALIBRATION_SCHEMES)
    mapping = not isinstance(value, str)
    if scheme == "factory":
        kwargs = kwargs_of(options, set(), text, mapping)
        if not isinstance(target, str) or not TARGET.match(target):
            raise BadInputError(
                f"{text}: factory target {target!r} is not 'package.module:callable'"
            )
        if factories is not None:
            factories.check_target(target, text)
        return CalibrationSource("factory", target, tuple(sorted(kwargs.items())), text=text)
    allowed = {"batch_size"} | ({"max_length"} if scheme == "text" else set())
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise BadInputError(
            f"{text}: unknown option(s) {', '.join(unknown)} for {scheme}: sources; allowed: "
            f"{', '.join(sorted(allowed))}"
        )
    return CalibrationSource(
        scheme, resolve_path(target, base_dir, text, f"{scheme}:"), (),
        _positive(options.get("batch_size"), "batch_size", text),
        _positive(options.get("max_length"), "max_length", text), text=text,
    )
