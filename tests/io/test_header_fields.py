"""Each field check of the safetensors header reader, with its whole message."""

from __future__ import annotations

import errno
import json
import os

import pytest

from mono_quant import BadInputError, StorageError
from mono_quant.io._safetensors_header import MAX_HEADER_SIZE, read_header


def _write(path, header, data=b""):
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        pytest.param([1], "expected an object with exactly 'dtype', 'shape' and 'data_offsets'",
                     id="not-object"),
        pytest.param({**F32, "x": 1}, "expected an object with exactly 'dtype', 'shape' and "
                     "'data_offsets'", id="extra-key"),
        pytest.param({**F32, "shape": [True, 2]}, "shape [True, 2] is not a list of "
                     "non-negative integers", id="bool-dim"),
        pytest.param({**F32, "shape": [-2]}, "shape [-2] is not a list of non-negative "
                     "integers", id="negative-dim"),
        pytest.param({**F32, "shape": "2"}, "shape '2' is not a list of non-negative integers",
                     id="shape-str"),
        pytest.param({**F32, "data_offsets": [0]}, "data_offsets [0] is not a [begin, end] pair "
                     "with begin <= end", id="one-offset"),
        pytest.param({**F32, "data_offsets": [8, 0]}, "data_offsets [8, 0] is not a [begin, end] "
                     "pair with begin <= end", id="reversed"),
        pytest.param({**F32, "data_offsets": [False, 8]}, "data_offsets [False, 8] is not a "
                     "[begin, end] pair with begin <= end", id="bool-offset"),
        pytest.param({**F32, "data_offsets": [-1, 8]}, "data_offsets [-1, 8] is not a "
                     "[begin, end] pair with begin <= end", id="negative-offset"),
    ],
)
def test_bad_entries(tmp_path, entry, problem):
    path = _write(tmp_path / "x.safetensors", {"t": entry}, b"\0" * 8)
    with pytest.raises(BadInputError) as err:
        read_header(path)
    assert str(err.value) == f"{path}: invalid safetensors header: tensor 't': {problem}"


def test_unknown_dtype_lists_the_known_ones(tmp_path):
    path = _write(tmp_path / "x.safetensors", {"t": {**F32, "dtype": "F13"}}, b"\0" * 8)
    with pytest.raises(BadInputError, match=r"unknown dtype 'F13' \(expected one of BOOL, U8, "
                       r"I8, "):
        read_header(path)


def test_empty_tensors_and_empty_files_are_valid(tmp_path):
    path = _write(tmp_path / "e.safetensors",
                  {"e": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}})
    header = read_header(path)
    assert header.tensors["e"].shape == (0,) and header.tensors["e"].dtype == "F32"
    assert read_header(_write(tmp_path / "none.safetensors", {})).tensors == {}


def test_header_length_limit_is_inclusive(tmp_path):
    path = tmp_path / "big.safetensors"
    path.write_bytes(MAX_HEADER_SIZE.to_bytes(8, "little") + b"{}")
    with pytest.raises(BadInputError) as err:
        read_header(path)
    assert str(err.value) == (
        f"{path}: truncated safetensors file: the header declares more than the 2 bytes that "
        "follow its length field")  # the declared length is the file's bytes: never echoed


def test_a_folder_is_not_a_file(tmp_path):
    with pytest.raises(BadInputError) as err:
        read_header(tmp_path)
    assert str(err.value) == f"{tmp_path}: is a folder, expected a .safetensors file"


def _raw(path, header_bytes: bytes, data: bytes = b""):
    path.write_bytes(len(header_bytes).to_bytes(8, "little") + header_bytes + data)
    return path


def _message(path) -> str:
    with pytest.raises(BadInputError) as err:
        read_header(path)
    return str(err.value)


def test_a_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.safetensors"
    assert _message(path) == f"{path}: no such file"


def test_a_file_that_cannot_be_opened_is_a_storage_error(tmp_path):
    """A path through a regular file: ``open`` fails with ENOTDIR, neither missing nor a
    folder (permissions cannot make this case here: the tests run as root)."""
    (tmp_path / "plain").write_bytes(b"")
    path = tmp_path / "plain" / "x.safetensors"
    with pytest.raises(StorageError) as err:
        read_header(path)
    assert str(err.value) == (f"{path}: cannot read: [Errno {errno.ENOTDIR}] "
                              f"{os.strerror(errno.ENOTDIR)}: '{path}'")


def test_a_header_that_is_not_utf8_names_the_byte(tmp_path):
    path = _raw(tmp_path / "x.safetensors", b'{"ab\xff": 1}')  # byte 4 is not UTF-8
    assert _message(path) == (
        f"{path}: not a safetensors file (garbage header): not UTF-8 at header byte 4")


def test_a_header_nested_too_deeply(tmp_path):
    path = _raw(tmp_path / "x.safetensors", b"[" * 100_000 + b"]" * 100_000)
    assert _message(path) == f"{path}: not a safetensors file (garbage header): nested too deeply"


def test_a_header_that_is_not_an_object(tmp_path):
    path = _raw(tmp_path / "x.safetensors", b"[1, 2]")
    assert _message(path) == (
        f"{path}: not a safetensors file (garbage header): the header is not an object")


@pytest.mark.parametrize("metadata", [{"a": 1}, {"a": None}, ["a"], "a"])
def test_metadata_must_map_strings_to_strings(tmp_path, metadata):
    path = _write(tmp_path / "x.safetensors", {"__metadata__": metadata})
    assert _message(path) == (
        f"{path}: invalid safetensors header: '__metadata__' must map strings to strings")
