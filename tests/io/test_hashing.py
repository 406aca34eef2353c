from __future__ import annotations

import hashlib
import os

import pytest

from mono_quant.io.hashing import sha256_fd, sha256_path, size_path


def test_file_digest_is_sha256_of_bytes(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"x" * 3_000_000)
    assert sha256_path(p) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    assert size_path(p) == 3_000_000


def test_fd_digest_reads_the_whole_file_from_a_duplicate_and_closes_it(tmp_path):
    """How the streamed writer hashes its artifact while the file is still open (and synced):
    the writer's own offset stays where it was, the duplicate is closed."""
    data = os.urandom(40 << 20) + b"tail"  # more than one 16 MiB read
    with open(tmp_path / "a.bin", "w+b") as f:
        f.write(data)
        f.flush()
        f.seek(5)
        fd = os.dup(f.fileno())
        assert sha256_fd(fd) == (hashlib.sha256(data).hexdigest(), len(data))
        assert f.tell() == 5
    with pytest.raises(OSError):
        os.fstat(fd)


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


def test_state_dict_digest_covers_values_names_and_dtypes():
    import torch
    from torch import nn

    from mono_quant.io.hashing import state_dict_digest

    torch.manual_seed(0)
    a = nn.Linear(4, 3)
    b = nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    assert state_dict_digest(a) == state_dict_digest(b)
    expected = hashlib.sha256()
    for name, t in sorted(a.state_dict().items()):
        expected.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        expected.update(t.detach().numpy().tobytes())
    assert state_dict_digest(a) == expected.hexdigest()
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert state_dict_digest(a) != state_dict_digest(b)
    assert state_dict_digest(a) != state_dict_digest(a.to(torch.bfloat16))


def test_state_dict_digest_reads_every_layout_the_same_way():
    """Contiguous tensors are hashed in place, others block by block: both give the bytes of
    the tensor in row-major order (bfloat16, bool, a transposed view, a 1M+ value tensor)."""
    import torch
    from torch import nn

    from mono_quant.io.hashing import state_dict_digest

    torch.manual_seed(0)
    m = nn.Module()
    m.register_buffer("big", torch.randn(1100, 1000))  # more than one 1 MiB block
    m.register_buffer("bf16", torch.randn(5, 7).to(torch.bfloat16))
    m.register_buffer("flag", torch.tensor([True, False]))
    m.register_buffer("transposed", torch.randn(6, 4).t())
    m.register_buffer("empty", torch.empty(0, 3))
    expected = hashlib.sha256()
    for name, t in sorted(m.state_dict().items()):
        expected.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        expected.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    assert state_dict_digest(m) == expected.hexdigest()
