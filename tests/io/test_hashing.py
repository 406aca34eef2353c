from __future__ import annotations

import hashlib

from mono_quant.io.hashing import sha256_path, size_path


def test_file_digest_is_sha256_of_bytes(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"x" * 3_000_000)
    assert sha256_path(p) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    assert size_path(p) == 3_000_000


def test_folder_digest_covers_names_and_contents(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub" / "w.bin").write_bytes(b"abc")
    expected = hashlib.sha256(
        f"config.json\0{hashlib.sha256(b'{}').hexdigest()}\n"
        f"sub/w.bin\0{hashlib.sha256(b'abc').hexdigest()}\n".encode()
    ).hexdigest()
    assert sha256_path(tmp_path) == expected
    assert size_path(tmp_path) == 5
    (tmp_path / "sub" / "w.bin").rename(tmp_path / "sub" / "v.bin")
    assert sha256_path(tmp_path) != expected
