"""Every branch of ``classify``: what a failed attempt becomes (fail now, or retry later).

The database and broker errors are real ones, raised by their client libraries connecting to a
closed port; the rest are our own errors as the pipeline raises them.
"""

from __future__ import annotations

import errno
import itertools

import pytest
import torch

from mono_quant.catalog import ErrorKind
from mono_quant.errors import (
    BadConfigError,
    BadInputError,
    MonoQuantError,
    StorageError,
    TransientError,
)
from mono_quant.worker.job import classify

RETRY = (ErrorKind.TRANSIENT, True)
INTERNAL = (ErrorKind.INTERNAL, False)
CLOSED = "127.0.0.1:1"  # nothing listens on port 1: connecting fails at once


def _raised(fn):
    try:
        fn()
    except Exception as e:
        return e
    raise AssertionError(f"{fn} did not raise")


def _postgres():
    import psycopg

    return _raised(lambda: psycopg.connect(f"postgresql://postgres@{CLOSED}/x", connect_timeout=2))


def _sqlalchemy():
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"postgresql+psycopg://postgres@{CLOSED}/x")
    try:
        return _raised(engine.connect)
    finally:
        engine.dispose()


def _redis():
    import redis

    return _raised(redis.Redis.from_url(f"redis://{CLOSED}/0", socket_connect_timeout=2).ping)


def _kombu():
    from kombu import Connection

    with Connection(f"redis://{CLOSED}/0", connect_timeout=2) as conn:
        return _raised(lambda: conn.ensure_connection(max_retries=1, interval_start=0,
                                                      interval_step=0, timeout=2))


@pytest.mark.parametrize(
    ("make", "module"),
    [
        pytest.param(_postgres, "psycopg", id="psycopg"),
        pytest.param(_sqlalchemy, "sqlalchemy", id="sqlalchemy"),
        pytest.param(_redis, "redis", id="redis"),
        pytest.param(_kombu, "kombu", id="kombu"),
    ],
)
def test_database_and_broker_errors_are_retried(make, module):
    e = make()
    assert type(e).__module__.split(".")[0] == module  # a real error of that library
    assert classify(e) == RETRY


def _chain(*errors: BaseException) -> BaseException:
    """``errors[0]`` raised from ``errors[1]`` raised from ... (a real ``__cause__`` chain)."""
    for outer, inner in itertools.pairwise(errors):
        outer.__cause__ = inner
    return errors[0]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        pytest.param(BadConfigError("x"), (ErrorKind.BAD_CONFIG, False), id="bad-config"),
        pytest.param(BadInputError("x"), (ErrorKind.BAD_INPUT, False), id="bad-input"),
        pytest.param(TransientError("x"), RETRY, id="transient"),
        pytest.param(torch.OutOfMemoryError("x"), RETRY, id="oom"),
        pytest.param(torch.cuda.OutOfMemoryError("x"), RETRY, id="cuda-oom"),
        pytest.param(OSError("no errno"), RETRY, id="oserror-without-errno"),
        pytest.param(StorageError("no errno, no cause"), INTERNAL, id="storage-own-check"),
        pytest.param(OSError(errno.EIO, "io"), RETRY, id="eio"),
        pytest.param(OSError(errno.ENOSPC, "full"), RETRY, id="enospc"),
        pytest.param(TimeoutError(errno.ETIMEDOUT, "timed out"), RETRY, id="etimedout"),
        *(pytest.param(OSError(code, "x"), INTERNAL, id=errno.errorcode[code].lower())
          for code in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR,
                       errno.EISDIR)),
        pytest.param(_chain(StorageError("w"), OSError(errno.EIO, "io")), RETRY,
                     id="storage-from-eio"),
        pytest.param(_chain(StorageError("w"), OSError(errno.EROFS, "ro")), INTERNAL,
                     id="storage-from-erofs"),
        pytest.param(_chain(StorageError("w"), RuntimeError("r"), OSError(errno.EIO, "io")),
                     RETRY, id="eio-deeper-in-the-chain"),
        pytest.param(_chain(StorageError("w"), RuntimeError("r")), INTERNAL,
                     id="storage-from-non-os-error"),
        pytest.param(_chain(StorageError(errno.EIO, "own errno"), OSError(errno.EROFS, "ro")),
                     RETRY, id="own-errno-wins-over-cause"),
        pytest.param(MonoQuantError("x"), INTERNAL, id="our-bug"),
        pytest.param(ZeroDivisionError(), INTERNAL, id="python-bug"),
        pytest.param(KeyError("k"), INTERNAL, id="key-error"),
    ],
)
def test_classify(exc, expected):
    assert classify(exc) == expected
