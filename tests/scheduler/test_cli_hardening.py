"""Issue 13: every bad value on the command line is exit 2 with one line, read-only commands
create nothing, names cannot drive the terminal, and writes never hit the model's folder.

The CLI runs in this process (``main``), so each case costs milliseconds, not an interpreter.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import pytest
import torch

from mono_quant import QuantConfig, quantize_model
from mono_quant.catalog import ArtifactQuery, Catalog, add_artifact, verify_artifacts
from mono_quant.catalog.batches import JobRow, create_batch
from mono_quant.catalog.models import Job
from mono_quant.config import get_settings
from mono_quant.scheduler.cli import main
from mono_quant.scheduler.commands.catalog import print_table
from mono_quant.scheduler.commands.jobs import _print_status
from mono_quant.scheduler.service import BatchStatus
from tests.io.hf_fixture import make_hf_folder


@pytest.fixture
def settings_env(monkeypatch, tmp_path):
    """Point this process's settings at a fresh data folder (and restore them after)."""
    def use(**env: str) -> None:
        monkeypatch.setenv("MONO_QUANT_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.delenv("MONO_QUANT_CATALOG_URL", raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        get_settings.cache_clear()

    yield use
    get_settings.cache_clear()


def _one_line_error(capsys, rc: int) -> str:
    out = capsys.readouterr()
    assert rc == 2, out
    assert "Traceback" not in out.err and out.err.count("\n") == 1, out.err
    return out.err


@pytest.fixture
def upgraded(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    Catalog(url).upgrade()
    return url


# --- read-only commands create nothing ------------------------------------------------------


def test_catalog_list_on_a_missing_sqlite_file_creates_nothing(tmp_path, capsys):
    target = tmp_path / "new" / "path" / "catalog.db"
    err = _one_line_error(capsys, main(["catalog", "list", "--url", f"sqlite:///{target}"]))
    assert "catalog database" in err and "does not exist" in err
    assert not (tmp_path / "new").exists()


def test_status_on_a_missing_catalog_creates_nothing(tmp_path, capsys, settings_env):
    settings_env()
    err = _one_line_error(capsys, main(["status"]))
    assert "does not exist" in err
    assert not (tmp_path / "data").exists()


# --- ids, batches, times ------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["catalog", "show", "99999999999999999999"],
    ["catalog", "show", "٢"],
    ["catalog", "verify", "²"],
    ["status", "99999999999999999999"],
    ["retry", "--batch", "²"],
    ["cancel", "--job", "٢"],
    ["catalog", "list", "--limit", "99999999999999999999"],
    ["catalog", "list", "--batch", "99999999999999999999"],
    ["catalog", "list", "--batch", "²"],
    ["status", "٢"],
], ids=["huge-id", "arabic-indic-id", "superscript-id", "huge-batch", "superscript-batch",
        "arabic-indic-job", "huge-limit", "huge-batch-filter", "superscript-batch-filter",
        "arabic-indic-batch"])
def test_bad_numbers_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "expected" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["catalog", "list", "--since", "99999999999d"],
], ids=["huge-since"])
def test_values_the_database_would_overflow_on_are_bad_input(argv, upgraded, capsys):
    _one_line_error(capsys, main([*argv, "--url", upgraded]))


@pytest.mark.parametrize("value", ["²", "٢"], ids=["superscript", "arabic-indic"])
def test_unicode_digits_never_match_an_id(value):
    """``int()`` reads them as 2; the library keeps them as a name (which no batch has) and
    the CLI refuses them as a usage error (test_bad_numbers_are_usage_errors)."""
    assert ArtifactQuery(batches=[value]).batches == (value,)
    assert ArtifactQuery(batches=["2", 3]).batches == (2, 3)


# --- names cannot drive the terminal ----------------------------------------------------------


def test_status_and_tables_escape_control_characters(capsys):
    evil = "job\x1b[2J\x1b]0;pwned\x07"
    status = BatchStatus(1, "b\x1b[31m", {"failed": 1}, [
        {"job": 1, "name": evil, "kind": "bad_input", "error": "bad\rvalue", "attempts": 1}],
        0, 1)
    _print_status(status, False)
    record = {"id": 1, "job_id": 1, "job_name": evil, "path": "/p/" + evil,
              "model_source": evil, "scheme": "s", "granularity": "g",
              "group_size": None, "mode": "m", "format": "f", "weight_sqnr_db": 1.0,
              "weight_sqnr_db_min": 1.0, "output_cosine": None, "size_bytes": 1,
              "compression_ratio": 1.0, "created_at": "2024-01-01T00:00:00"}
    print_table([record])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "job\\x1b[2J\\x1b]0;pwned\\x07" in out and "b\\x1b[31m" in out
    assert "bad\\rvalue" in out


# --- quantize: allowed code only, never into the model's folder ------------------------------


def test_quantize_refuses_a_factory_outside_the_allow_list(tmp_path, capsys, settings_env):
    settings_env(MONO_QUANT_ALLOWED_FACTORIES="mono_quant.*")
    marker = tmp_path / "pwned"
    rc = main(["quantize", f"factory:os:system?command=touch%20{marker}", "-o",
               str(tmp_path / "out.safetensors"), "--quiet"])
    err = _one_line_error(capsys, rc)
    assert "MONO_QUANT_ALLOWED_FACTORIES" in err
    assert not marker.exists()


@pytest.mark.parametrize("inside", [False, True], ids=["the-folder", "inside-it"])
def test_quantize_never_writes_into_the_source_folder(tmp_path, capsys, inside):
    victim = make_hf_folder(tmp_path / "victim")
    (victim / "notes.txt").write_text("my notes")
    before = {p.name: p.read_bytes() for p in victim.iterdir()}
    capsys.readouterr()  # transformers' own progress output while saving the folder
    out = victim / "q" if inside else victim
    rc = main(["quantize", f"hf:{victim}", "-o", str(out), "--format", "compressed-tensors",
               "--quiet"])
    err = _one_line_error(capsys, rc)
    assert "is inside the model's source folder" in err
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == before


# --- special files never block ----------------------------------------------------------------


def _free_a_stuck_reader(path, seconds: float) -> None:
    """A regression (a reader opening the FIFO) fails the timing check instead of hanging."""
    def writer():
        time.sleep(seconds)
        with contextlib.suppress(OSError):  # nobody stuck reading: nothing to free
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    threading.Thread(target=writer, daemon=True).start()


def test_inspect_refuses_a_fifo_at_once(tmp_path, capsys):
    fifo = tmp_path / "a.safetensors"
    os.mkfifo(fifo)
    _free_a_stuck_reader(fifo, 8.0)
    t0 = time.monotonic()
    err = _one_line_error(capsys, main(["inspect", str(fifo)]))
    assert time.monotonic() - t0 < 5
    assert "is a FIFO (named pipe)" in err


def test_verify_reports_a_fifo_in_the_storage_root_without_reading_it(tmp_path, upgraded):
    root = tmp_path / "store"
    root.mkdir()
    os.mkfifo(root / "x.safetensors")
    _free_a_stuck_reader(root / "x.safetensors", 8.0)
    _, info = quantize_model(torch.nn.Sequential(torch.nn.Linear(4, 2)), QuantConfig(),
                             progress=False)
    catalog = Catalog(upgraded)
    with catalog.begin() as session:
        _, (job_id,) = create_batch(session, [JobRow("j", "m", {}, {}, "a" * 64, "cpu", 1)],
                                    name="b")
        add_artifact(session, session.get(Job, job_id), "x.safetensors", info,
                     storage_root=root, sha256="0" * 64, size_bytes=1)
    t0 = time.monotonic()
    with catalog.begin() as session:
        (result,) = list(verify_artifacts(session, root))
    assert time.monotonic() - t0 < 5
    assert result.status == "unreadable" and "FIFO" in result.detail
