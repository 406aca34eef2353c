"""Shared fixtures: seeded randomness, the devices present, kernel-path switching."""

from __future__ import annotations

import os
import signal

import pytest
import torch

# A shell that starts the suite in the background (`make test-slow &`, a CI step under
# nohup) leaves SIGINT ignored, and every process a test starts inherits that: Python then
# installs no KeyboardInterrupt handler, so the tests that press Ctrl-C on a runner
# (tests/worker/test_local_faults.py, tests/tools/test_mutate.py) would find it ignored and
# fail. A handled signal is reset to the default by exec, so the subprocesses get Ctrl-C back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

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
