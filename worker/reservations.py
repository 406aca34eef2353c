"""Per-device memory reservations: two jobs never oversubscribe one GPU (or one host).

``mem_get_info`` only shows memory already allocated; a job admitted a second ago may not
have loaded its model yet. So every admitted job records what it will need in its device's
ledger — ``<data dir>/admission/<host>-<device>.json``, guarded by an ``flock`` on a sibling
``.lock`` file — and admission counts those reservations as taken. A job releases its entry
when it ends, whatever the outcome; a worker that is killed cannot, so each entry carries the
process id **and** its start time (``/proc/<pid>/stat``), and an entry whose process is gone
(or whose pid was reused by another process) is dropped by the next admission on the device.

The ledger is per host (GPUs are local); keep the data dir on a local or lock-capable
filesystem.

Example:
    >>> import tempfile, pathlib
    >>> from mono_quant.worker.admission import DeviceMemory, Estimate
    >>> ledger = Ledger(pathlib.Path(tempfile.mkdtemp()), "gpu0")
    >>> gpu = DeviceMemory("gpu0", "test GPU", total=100, free=100)
    >>> ledger.admit(Estimate("in_memory", {"model": 60}), gpu, job_id=1).verdict.value
    'admit'
    >>> ledger.admit(Estimate("in_memory", {"model": 60}), gpu, job_id=2).verdict.value
    'wait'
    >>> ledger.release(1)
    >>> ledger.admit(Estimate("in_memory", {"model": 60}), gpu, job_id=2).verdict.value
    'admit'
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from mono_quant.worker.admission import Decision, DeviceMemory, Estimate, Verdict, decide

__all__ = ["Ledger", "process_start"]


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, from /proc), or None when
    the process does not exist. Where /proc is missing, ``"?"`` for a live process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
        return stat.rpartition(")")[2].split()[19]  # field 22: starttime
    except FileNotFoundError:
        pass
    except (OSError, IndexError):
        return "?"
    if not Path("/proc/self").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "?"
        return "?"
    return None


def _alive(entry: dict) -> bool:
    pid, start = entry.get("pid"), entry.get("start")
    if not isinstance(pid, int):
        return False
    now = process_start(pid)
    return now is not None and (now == "?" or start in (None, "?") or now == start)


class Ledger:
    """The reservations of one device of this host."""

    def __init__(self, folder: Path, device_key: str) -> None:
        self.folder = Path(folder)
        stem = f"{socket.gethostname()}-{device_key}"
        self.path = self.folder / f"{stem}.json"
        self._lock = self.folder / f"{stem}.lock"

    @contextlib.contextmanager
    def _entries(self) -> Iterator[dict[str, dict]]:
        """The live entries under the lock; what the block leaves in the dict is written."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self._lock, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                try:
                    data = json.loads(self.path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    data = {}
                entries = {k: v for k, v in data.items() if isinstance(v, dict) and _alive(v)} \
                    if isinstance(data, dict) else {}
                yield entries
                tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(entries, sort_keys=True), encoding="utf-8")
                os.replace(tmp, self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def reserved(self) -> dict[str, dict]:
        """The live reservations: ``{job id: {"pid", "start", "bytes"}}``."""
        with self._entries() as entries:
            return dict(entries)

    def admit(self, estimate: Estimate, memory: DeviceMemory, job_id: int,
              pid: int | None = None) -> Decision:
        """Decide under the lock; on ``admit`` the job's reservation is recorded for ``pid``
        (default: this process) until :meth:`release`."""
        pid = os.getpid() if pid is None else pid
        with self._entries() as entries:
            entries.pop(str(job_id), None)  # an earlier attempt's entry of this job
            taken = sum(int(e.get("bytes", 0)) for e in entries.values())
            decision = decide(estimate, memory, taken)
            if decision.verdict is Verdict.ADMIT:
                entries[str(job_id)] = {"pid": pid, "start": process_start(pid),
                                        "bytes": estimate.bytes}
        return decision

    def release(self, job_id: int) -> None:
        with self._entries() as entries:
            entries.pop(str(job_id), None)
