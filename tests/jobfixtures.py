"""Model factories for the batch-system tests, importable by worker subprocesses.

Each is a ``factory:tests.jobfixtures:NAME`` target. Files under a test's ``tmp_path`` carry
state between attempts (a worker process cannot see the test's memory).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from mono_quant import demo_models
from mono_quant.errors import BadInputError, TransientError


def tiny(seed: int = 0):
    """A small MLP (fast to quantize)."""
    return demo_models.mlp(in_features=64, hidden=64, out_features=16, seed=seed)


def wide(rows: int = 4096, cols: int = 6144):
    """One large Linear layer: a ``rows * cols`` byte int8 artifact (25 MB by default, several
    multipart-upload parts), for tests that kill a worker mid-upload."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(cols, rows, bias=False))


def misreported():
    """A model whose state dict (what an artifact stores) is not what it computes with: a
    hook scales every ``weight_scale`` as the state dict is taken. No artifact of it
    reproduces the quantized model, so the served check fails."""
    model = tiny()

    def scale_scales(module, state_dict, prefix, local_metadata):
        for key in list(state_dict):
            if key.endswith("weight_scale"):
                state_dict[key] = state_dict[key] * 1.001

    model.register_state_dict_post_hook(scale_scales)
    return model


def probe(out: str):
    """Record what the job's process sees (GPU pinning), then return a model."""
    import torch

    Path(out).write_text(json.dumps({
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cuda_initialized": torch.cuda.is_initialized(),
    }))
    return tiny()


def flaky(marker: str):
    """Fails transiently the first time (creates ``marker``), works afterwards."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise TransientError("simulated transient failure (storage hiccup)")
    return tiny()


def needs_file(path: str):
    """A bad-input failure until ``path`` exists (the 'cause fixed' of a retry)."""
    if not Path(path).exists():
        raise BadInputError(f"{path}: the weights file does not exist")
    return tiny()


def slow_first(marker: str, seconds: float = 60.0):
    """Sleeps ``seconds`` on the first attempt (so a test can kill it), quick afterwards."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        time.sleep(seconds)
    return tiny()


def crash():
    """Kills its own process, as a segfault or the OOM killer would."""
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def cancels_itself(catalog_url: str, job_id: int = 1):
    """Cancels its own job through the catalog while it loads (a user's `cancel`)."""
    from mono_quant.catalog import Catalog, jobs

    catalog = Catalog(catalog_url)
    with catalog.begin() as session:
        jobs.cancel_jobs(session, job_ids=[job_id])
    catalog.dispose()
    return tiny()


def exits(code: int = 3, marker: str = ""):
    """Calls ``sys.exit(code)`` (SystemExit), on every attempt or only while ``marker`` is
    missing (then creates it)."""
    if not marker or not Path(marker).exists():
        if marker:
            Path(marker).write_text("exited once")
        sys.exit(code)
    return tiny()


def interrupts():
    """Raises KeyboardInterrupt, as a library catching SIGINT badly might."""
    raise KeyboardInterrupt("raised by the model factory")


def hard_exit_first(marker: str):
    """``os._exit(0)`` on the first attempt (no cleanup, no exception), fine afterwards."""
    path = Path(marker)
    if not path.exists():
        path.write_text("exited once")
        os._exit(0)
    return tiny()


def hijack_storage(root: str, outside: str):
    """Plants symlinks to ``outside`` over every key-prefix folder of the storage root while
    the job runs (moving any real folder aside first), as a hostile user of a shared volume
    could; then returns a model, so the job goes on to write its artifact."""
    Path(root).mkdir(parents=True, exist_ok=True)
    for i in range(256):
        prefix = Path(root) / f"{i:02x}"
        if prefix.is_dir() and not prefix.is_symlink():
            prefix.rename(prefix.with_name(prefix.name + ".moved"))
        if not prefix.exists():
            prefix.symlink_to(outside, target_is_directory=True)
    return tiny()
