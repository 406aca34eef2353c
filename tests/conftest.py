"""Shared fixtures: seeded randomness, the devices present, kernel-path switching."""

from __future__ import annotations

import os

import pytest
import torch

pytest_plugins = ["pytester"]  # tests/test_conftest.py runs the fixtures in a scratch session

#: Every device a test runs on; the CUDA cases are reported as skipped (with the reason) on a
#: machine without a GPU rather than silently not generated.
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="CUDA is not available on this machine")),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Runs a test on every device (CPU always; CUDA when there is a GPU, else skipped)."""
    return request.param


@pytest.fixture
def kernel_path(request, monkeypatch):
    """Force the eager or the torch.compile kernels for the duration of a test."""

    def use(path: str) -> None:
        monkeypatch.setenv("MONO_QUANT_COMPILE", {"eager": "never", "compiled": "always"}[path])

    yield use


def pytest_configure(config):
    # Tests never write into the working tree's default data folder.
    os.environ.setdefault("MONO_QUANT_DATA_DIR", str(config.rootpath / ".pytest_cache" / "data"))
    # The test factories (tests.jobfixtures, …) are trusted here, in this process and in the
    # workers it starts; tests of the allow-list pass their own setting.
    os.environ.setdefault("MONO_QUANT_ALLOWED_FACTORIES", "mono_quant.*,tests.*")
    # gcsfs reads this when it is imported, whichever test imports it first: without it, every
    # gs:// bucket the GCS emulator serves costs a 60 s gRPC probe (tests/emulators.py).
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
