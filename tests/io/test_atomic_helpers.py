"""``fsync_dir`` and the parent-folder step of atomic writes, on real folders.

A descriptor leak or a folder that cannot be made is observed directly: open descriptors are
counted in ``/proc/self/fd`` and the unwritable parent is a real file in the way.
"""

from __future__ import annotations

import os
import sys

import pytest

from mono_quant.errors import StorageError
from mono_quant.io._atomic import atomic_dir, atomic_file, fsync_dir

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="counts descriptors in /proc/self/fd (Linux)"
)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_fsync_dir_syncs_that_folder_and_closes_it(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    before = _open_fds()
    fsync_dir(tmp_path)
    assert synced == [str(tmp_path)]
    assert _open_fds() == before  # the descriptor was closed


def test_fsync_dir_ignores_what_it_cannot_open_or_sync(tmp_path, monkeypatch):
    fsync_dir(tmp_path / "missing")  # cannot be opened: a no-op, no error

    def refuse(fd):
        raise OSError(22, "fsync not supported")

    monkeypatch.setattr(os, "fsync", refuse)
    before = _open_fds()
    fsync_dir(tmp_path)  # a filesystem without directory fsync: no error, no leak
    assert _open_fds() == before


def test_missing_parent_folders_are_created(tmp_path):
    target = tmp_path / "a" / "b" / "c.bin"
    with atomic_file(target) as f:
        f.write(b"x")
    assert target.read_bytes() == b"x"
    with atomic_file(target) as f:  # and an existing parent is fine
        f.write(b"y")
    assert target.read_bytes() == b"y"
    with atomic_dir(tmp_path / "d" / "e") as tmp:
        (tmp / "f").write_bytes(b"z")
    assert (tmp_path / "d" / "e" / "f").read_bytes() == b"z"


def test_a_file_in_the_way_of_the_parent(tmp_path):
    (tmp_path / "blocker").write_bytes(b"")
    target = tmp_path / "blocker" / "sub" / "c.bin"
    with pytest.raises(StorageError) as err, atomic_file(target):
        pass
    assert str(err.value).startswith(
        f"{target}: cannot create the folder {tmp_path / 'blocker' / 'sub'}: ")
    assert isinstance(err.value.__cause__, OSError)
