"""SQLite's write-ahead log is checkpointed on a thread of its own after a bulk write
(``Catalog.checkpoint_later``): never two at once, a failure logged and not raised, and the
process does not exit before it is done. Real SQLite files; the slow or failing checkpoint
is the real one wrapped (a sleep, an error), because a disk that slow cannot be had here."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mono_quant.catalog import Catalog


@pytest.fixture
def catalog(tmp_path):
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    catalog.upgrade()
    yield catalog
    catalog.dispose()


def _bulk_write(catalog: Catalog, rows: int = 3000) -> None:
    """About 3 MB written in one transaction with the automatic checkpoint off."""
    with catalog.begin_bulk() as s:
        conn = s.connection()
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS filler (x TEXT)")
        conn.exec_driver_sql(
            f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) "
            "INSERT INTO filler SELECT hex(randomblob(500)) FROM n")


def test_the_log_is_copied_on_a_thread_of_its_own(catalog, monkeypatch):
    threads = []
    real = Catalog.checkpoint
    monkeypatch.setattr(Catalog, "checkpoint",
                        lambda self: threads.append(threading.current_thread()) or real(self))
    _bulk_write(catalog)
    file = Path(catalog.engine.url.database)
    before = file.stat().st_size  # the rows are in the log only
    catalog.checkpoint_later()
    catalog.wait_checkpoint()
    assert [t.name for t in threads] == ["mono-quant-checkpoint"]
    assert threads[0] is not threading.current_thread() and not threads[0].daemon
    assert before < 1_000_000 < 3_000_000 < file.stat().st_size  # copied into the file


def test_checkpoints_never_overlap(catalog, monkeypatch):
    running, most, lock = [0], [0], threading.Lock()
    real = Catalog.checkpoint

    def slow(self):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        real(self)
        with lock:
            running[0] -= 1

    monkeypatch.setattr(Catalog, "checkpoint", slow)
    started = time.perf_counter()
    for _ in range(3):
        catalog.checkpoint_later()
    catalog.wait_checkpoint()
    assert most[0] == 1 and time.perf_counter() - started >= 0.6


def test_a_failed_checkpoint_is_logged_not_raised(catalog, monkeypatch, caplog):
    def broken(self):
        raise OSError("disk I/O error")

    monkeypatch.setattr(Catalog, "checkpoint", broken)
    with caplog.at_level(logging.WARNING, logger="mono_quant.catalog.db"):
        catalog.checkpoint_later()
        catalog.wait_checkpoint()
    [record] = [r for r in caplog.records if "checkpoint" in r.getMessage()]
    assert "disk I/O error" in record.getMessage() and "c.db" in record.getMessage()
    with catalog.begin() as s:  # the catalog goes on working
        assert s.connection().exec_driver_sql("SELECT 1").scalar() == 1


def test_dispose_waits_for_the_checkpoint(catalog, monkeypatch):
    done = []
    real = Catalog.checkpoint
    monkeypatch.setattr(Catalog, "checkpoint",
                        lambda self: (time.sleep(0.3), real(self), done.append(1)))
    catalog.checkpoint_later()
    catalog.dispose()
    assert done == [1]


def test_the_process_exits_after_the_checkpoint(tmp_path):
    """A CLI submit returns before the log is copied; the interpreter still finishes it."""
    marker = tmp_path / "copied"
    script = f"""
import time
from mono_quant.catalog import Catalog
real = Catalog.checkpoint
def slow(self):
    time.sleep(0.5)
    real(self)
    open({str(marker)!r}, "w").write("done")
Catalog.checkpoint = slow
catalog = Catalog("sqlite:///{tmp_path / 'p.db'}")
catalog.upgrade()
catalog.checkpoint_later()
print("returned", flush=True)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "returned" and marker.read_text() == "done"


def test_other_databases_have_nothing_to_checkpoint(catalog_url, backend):
    if backend != "postgresql":
        pytest.skip("PostgreSQL's side of checkpoint_later")
    catalog = Catalog(catalog_url)
    try:
        catalog.checkpoint_later()
        assert catalog._checkpointing is None
    finally:
        catalog.dispose()
