"""Test-only: holds a worker's sequential job still after a given block, so that a test can
SIGKILL it there (the kill is real; only the timing is arranged). Active only when
``MQ_TEST_PAUSE_AT_BLOCK`` is set, and once: the flag file marks that it paused."""

import os

if os.environ.get("MQ_TEST_PAUSE_AT_BLOCK"):
    from mono_quant.pipeline import progress as _progress

    _commit = _progress.Progress.commit_block

    def _commit_then_pause(self, index, *args, **kwargs):
        _commit(self, index, *args, **kwargs)
        flag = os.environ["MQ_TEST_PAUSE_FLAG"]
        if index == int(os.environ["MQ_TEST_PAUSE_AT_BLOCK"]) and not os.path.exists(flag):
            with open(flag, "w") as f:
                f.write(str(os.getpid()))
            import time

            time.sleep(600)  # until the test kills this process

    _progress.Progress.commit_block = _commit_then_pause
