"""Where mono-quant keeps its data when nothing says otherwise: a home independent of the cwd.

Settings come from ``MONO_QUANT_*`` variables first. What they leave unset comes from the
nearest ``mono-quant.toml`` in the current folder or a parent (found upward, like git finds
``.git``), and the data folder, when neither sets it, is a per-user data folder
(``platformdirs.user_data_dir("mono-quant")``, e.g. ``~/.local/share/mono-quant``). So
``mono-quant catalog list`` answers from the same catalog whichever folder it runs in.

A ``mono-quant.toml`` holds settings by their lower-case names without the prefix; relative
paths are relative to the file's folder::

    data_dir = "mq-data"                               # catalog.db and artifacts/ in there
    catalog_url = "postgresql+psycopg://q@db/mono_quant"
    broker_url = "redis://queue:6379/0"

Example:
    >>> import tempfile, pathlib
    >>> top = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (top / "mono-quant.toml").write_text('data_dir = "data"\\n')
    >>> (top / "sub").mkdir()
    >>> home = find_home({}, top / "sub")
    >>> home.environ["MONO_QUANT_DATA_DIR"] == str(top / "data"), home.source.endswith(".toml")
    (True, True)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mono_quant._storage_url import url_scheme
from mono_quant.errors import BadConfigError

__all__ = [
    "CONFIG_FILE",
    "FILE_KEYS",
    "LEGACY_DATA_DIR",
    "Home",
    "environ_with_home",
    "find_config_file",
    "find_home",
    "user_data_dir",
]

#: The file looked for in the current folder and its parents.
CONFIG_FILE = "mono-quant.toml"

#: Keys a config file may set (the settings' names, lower case, without MONO_QUANT_).
FILE_KEYS = ("data_dir", "catalog_url", "storage_root", "broker_url")
_PATH_KEYS = ("data_dir", "storage_root")
#: The data folder of mono-quant 0.1 (relative to the cwd), still honoured where it exists.
LEGACY_DATA_DIR = "mono-quant-data"


@dataclass(frozen=True)
class Home:
    """The environment settings are read from, and where the data folder came from."""

    #: ``os.environ`` with the config file's values (and the data folder) filled in.
    environ: Mapping[str, str]
    #: Where the data folder came from: an env variable, a file's path or the user folder.
    source: str
    #: The config file found, if any.
    config_file: Path | None
    #: The ``MONO_QUANT_*`` names whose value came from the config file (the environment
    #: left them unset), for ``mono-quant where``.
    from_file: frozenset[str] = frozenset()

    def origin(self, names: tuple[str, ...], default: str) -> str:
        """Where the setting read from ``names`` (without the prefix, first wins) came from:
        the environment variable, the config file's key, else ``default``.

        >>> Home({"MONO_QUANT_BROKER_URL": "redis://q"}, "", None).origin(("BROKER_URL",), "-")
        'environment (MONO_QUANT_BROKER_URL)'
        """
        for name in names:
            key = "MONO_QUANT_" + name
            if key in self.from_file:
                return f"{self.config_file} ({name.lower()})"
            if self.environ.get(key):
                return f"environment ({key})"
        return default


def user_data_dir() -> Path:
    """The per-user data folder (platformdirs), the last resort for the data folder."""
    import platformdirs

    return Path(platformdirs.user_data_dir("mono-quant", appauthor=False))


def find_config_file(start: Path) -> Path | None:
    """The nearest ``mono-quant.toml`` in ``start`` or one of its parents."""
    for folder in (start, *start.parents):
        candidate = folder / CONFIG_FILE
        if candidate.is_file():
            return candidate
    return None


def _read(path: Path) -> dict[str, str]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise BadConfigError(f"{path}: cannot read it as TOML: {e}") from e
    values: dict[str, str] = {}
    for key, value in data.items():
        if key not in FILE_KEYS:
            raise BadConfigError(
                f"{path}: unknown key {key!r}; expected some of {', '.join(FILE_KEYS)}"
            )
        if not isinstance(value, str) or not value:
            raise BadConfigError(f"{path}: {key} must be a non-empty string, got {value!r}")
        if key in _PATH_KEYS and url_scheme(value) is None:  # URLs stay as written
            value = str((path.parent / Path(value).expanduser()).resolve())
        values["MONO_QUANT_" + key.upper()] = value
    return values


def find_home(environ: Mapping[str, str], cwd: Path | None = None) -> Home:
    """Fill in what ``environ`` leaves unset from the config file, then the user folder."""
    start = Path.cwd() if cwd is None else cwd
    found = find_config_file(start)
    merged = dict(environ)
    from_file = _read(found) if found else {}
    for key, value in from_file.items():
        if not environ.get(key):
            merged[key] = value
    legacy = start / LEGACY_DATA_DIR
    if environ.get("MONO_QUANT_DATA_DIR"):
        source = "MONO_QUANT_DATA_DIR"
    elif "MONO_QUANT_DATA_DIR" in from_file:
        source = str(found)
    elif legacy.is_dir() and (legacy / "catalog.db").exists():
        # the old cwd-relative default, still used where it holds a catalog (no data lost)
        merged["MONO_QUANT_DATA_DIR"] = str(legacy.resolve())
        source = f"./{LEGACY_DATA_DIR} (the old default; move it or name it in {CONFIG_FILE})"
    else:
        merged["MONO_QUANT_DATA_DIR"] = str(user_data_dir())
        source = "the per-user data folder"
    taken = frozenset(k for k in from_file if not environ.get(k))
    return Home(merged, source, found, taken)


def environ_with_home(environ: Mapping[str, str] | None = None) -> Home:
    """:func:`find_home` of ``os.environ`` (default) from the current folder."""
    return find_home(os.environ if environ is None else environ)
