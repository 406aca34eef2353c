"""``read_header`` of an object store's URL: the header read with ranged GETs from a real
S3-compatible server (moto's, on 127.0.0.1), equal to the header of the same local file."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from mono_quant.io._safetensors_header import HeaderEntry, read_header
from tests.s3server import client, moto_server, new_bucket, s3_env

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def endpoint():
    with moto_server() as url:
        yield url


def test_a_header_read_from_a_store_url(endpoint, tmp_path, monkeypatch):
    for k, v in s3_env(endpoint).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    local = tmp_path / "x.safetensors"
    save_file({"a": torch.arange(4.0), "b": torch.zeros(2, 3, dtype=torch.int8)}, local,
              metadata={"format": "pt"})
    bucket = new_bucket(endpoint)
    client(endpoint).put(str(local), f"{bucket}/m/x.safetensors")  # plain s3fs
    url = f"s3://{bucket}/m/x.safetensors"
    header = read_header(url)
    assert header.path == url and isinstance(header.path, str)
    assert header.metadata == {"format": "pt"}
    assert header.tensors == {"a": HeaderEntry("F32", (4,), 0, 16),
                              "b": HeaderEntry("I8", (2, 3), 16, 22)}
    assert header.data_start == read_header(local).data_start
    assert not (tmp_path / "cache").exists()  # ranged reads: nothing downloaded
