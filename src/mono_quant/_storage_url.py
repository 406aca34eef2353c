"""Where a storage location points: a local folder, or a URL of an object store.

The one home of which URL schemes mono-quant writes to, and which optional extra brings each
one's fsspec backend. Both the service's settings (``MONO_QUANT_STORAGE_ROOT``) and the
library's readers (``load_model("s3://…")``) check a location here, so an unsupported scheme
is refused the same way everywhere instead of becoming a local folder named ``s3:``.

Example:
    >>> url_scheme("s3://mq/artifacts"), url_scheme("/data/artifacts"), url_scheme("C:\\\\x")
    ('s3', None, None)
    >>> local_path("file:///data/artifacts")
    '/data/artifacts'
"""

from __future__ import annotations

import re

from mono_quant.errors import BadConfigError

__all__ = ["STORE_EXTRAS", "check_store_url", "is_url", "local_path", "url_scheme"]

#: Object-store schemes and the extra that installs their fsspec backend
#: (``pip install 'mono-quant[s3]'``). ``file`` needs none (a plain folder).
STORE_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs",
                "az": "azure", "abfs": "azure", "abfss": "azure"}
#: Backends fsspec ships with itself: accepted without an extra (tests, local mirrors).
_BUILTIN = ("memory",)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")


def url_scheme(location: object) -> str | None:
    """The lower-cased scheme of ``scheme://…``, or None for a path (a drive letter is a path)."""
    m = _SCHEME.match(str(location))
    return m.group(1).lower() if m else None


def is_url(location: object) -> bool:
    """Whether ``location`` names an object store (a URL other than ``file://``)."""
    return url_scheme(location) not in (None, "file")


def local_path(location: str) -> str:
    """The path of a ``file://`` URL (or of a plain path, unchanged)."""
    if url_scheme(location) == "file":
        return re.sub(r"^file://(localhost)?", "", location, flags=re.IGNORECASE) or "/"
    return location


def _supported() -> str:
    return ", ".join(f"{s}://" for s in ("s3", "gs", "az", "file")) + " or a folder path"


def check_store_url(location: str, what: str) -> str:
    """``location`` (an object-store URL, without a trailing ``/``) if its backend is
    installed, else BadConfigError.

    ``what`` names the setting or argument, for the message. The backend module is imported
    here so a missing extra is found at start-up, not by the first job.
    """
    scheme = url_scheme(location)
    extra = STORE_EXTRAS.get(scheme or "")
    if extra is None and scheme not in _BUILTIN:
        raise BadConfigError(
            f"{what}={location!r}: the scheme {scheme}:// is not supported; expected "
            f"{_supported()}"
        )
    if not location.split("://", 1)[1].strip("/"):
        raise BadConfigError(f"{what}={location!r}: expected a bucket (and prefix) after "
                             f"{scheme}://, e.g. {scheme}://my-bucket/artifacts")
    try:
        import fsspec

        fsspec.get_filesystem_class(scheme)
    except ImportError as e:
        raise BadConfigError(
            f"{what}={location!r}: the {scheme}:// backend is not installed; install the "
            f"extra with `pip install 'mono-quant[{extra}]'`"
        ) from e
    return location.rstrip("/")
