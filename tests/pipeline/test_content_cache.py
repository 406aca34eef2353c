"""Weight digests from content hashes cached by stat: a touched but unchanged file keeps its
job's key (the job is skipped), a changed file gets a new one whatever its times say."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil

import pytest
from sqlalchemy import select

from mono_quant.catalog import Catalog, Job, JobStatus
from mono_quant.config import Settings
from mono_quant.pipeline.content_cache import CACHE_FILE, ContentHashCache
from mono_quant.pipeline.digest import weights_digest
from mono_quant.scheduler.manifest import parse_manifest
from tests.pipeline.archs import ARCHS
from tests.worker.harness import base_env, cli

pytest.importorskip("transformers", reason="needs the 'hf' extra")

LLAMA = next(a for a in ARCHS if a.name == "llama-untied")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    LLAMA.build().save_pretrained(folder)
    return folder


@pytest.fixture
def folder(tmp_path, saved):
    return shutil.copytree(saved, tmp_path / "m")


def _key(folder, cache) -> str:
    _, specs = parse_manifest({"jobs": [{"name": "a", "model": f"hf:{folder}"}]},
                              hash_cache=cache)
    return specs[0].idempotency_key


def _expected_digest(folder) -> str:
    """The digest from first principles: sha256 of '<name>\\0sha256\\0<sha256 of bytes>\\n'
    over the weight files in name order."""
    names = sorted(p.name for p in folder.iterdir()
                   if p.suffix == ".safetensors" or p.name == "config.json")
    lines = "".join(f"{n}\0sha256\0{hashlib.sha256((folder / n).read_bytes()).hexdigest()}\n"
                    for n in names)
    return hashlib.sha256(lines.encode()).hexdigest()


def _bump_mtime(path, by_ns: int = 5_000_000_000) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + by_ns))


def test_the_digest_is_the_content_hash_of_each_weight_file(tmp_path, folder):
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors"]
    cache = ContentHashCache(tmp_path / CACHE_FILE)
    assert weights_digest(folder, cache) == weights_digest(folder) == _expected_digest(folder)


def test_a_touched_but_unchanged_file_keeps_the_key_and_is_hashed_once(tmp_path, folder):
    cache = ContentHashCache(tmp_path / CACHE_FILE)
    first = _key(folder, cache)
    assert cache.stats == {"hits": 0, "misses": 2}  # config.json, model.safetensors
    assert _key(folder, cache) == first and cache.stats == {"hits": 2, "misses": 2}
    _bump_mtime(folder / "model.safetensors")  # touch: same bytes, new mtime and ctime
    assert _key(folder, cache) == first
    assert cache.stats == {"hits": 3, "misses": 3}  # read again once ...
    assert _key(folder, cache) == first and cache.stats == {"hits": 5, "misses": 3}  # ... then not
    # a new process (a later submit) finds the hashes in the file
    again = ContentHashCache(tmp_path / CACHE_FILE)
    assert _key(folder, again) == first and again.stats == {"hits": 2, "misses": 0}


def test_changed_bytes_with_the_old_size_and_mtime_are_a_new_job(tmp_path, folder):
    """The stat-only digest's blind spot: new values, same names/shapes/size, and the mtime
    put back (rsync -t, a restore): the old key (size, mtime, header) did not change."""
    cache = ContentHashCache(tmp_path / CACHE_FILE)
    first = _key(folder, cache)
    weights = folder / "model.safetensors"
    st = os.stat(weights)
    data = bytearray(weights.read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])  # the last float's bytes, header unchanged
    with open(weights, "r+b") as f:  # in place: same inode, same size
        f.write(data)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(weights).st_size == st.st_size and os.stat(weights).st_ino == st.st_ino
    second = _key(folder, cache)
    assert second != first and cache.stats["misses"] == 3  # ctime changed: read again
    assert weights_digest(folder) == _expected_digest(folder)
    assert _key(folder, ContentHashCache(tmp_path / "fresh.sqlite")) == second


def test_a_file_replaced_by_a_copy_with_the_same_times_is_read_again(tmp_path, folder):
    cache = ContentHashCache(tmp_path / CACHE_FILE)
    first = _key(folder, cache)
    weights = folder / "model.safetensors"
    other = tmp_path / "other"
    LLAMA.build(seed=3).save_pretrained(other)  # same size, other values
    shutil.copy2(other / "model.safetensors", tmp_path / "new.safetensors")
    st = os.stat(weights)
    os.utime(tmp_path / "new.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp_path / "new.safetensors", weights)  # a new inode under the old name
    assert _key(folder, cache) != first


def test_an_unusable_cache_hashes_at_every_submit_and_says_why(tmp_path, folder, caplog):
    (tmp_path / "blocked").write_text("a file where the cache's folder should be")
    where = tmp_path / "blocked" / CACHE_FILE
    with caplog.at_level(logging.WARNING, logger="mono_quant.pipeline.content_cache"):
        cache = ContentHashCache(where)
        assert weights_digest(folder, cache) == _expected_digest(folder)
        assert weights_digest(folder, cache) == _expected_digest(folder)  # same submit
        assert cache.stats == {"hits": 2, "misses": 2}
        later = ContentHashCache(where)  # the next submit: nothing was kept
        assert weights_digest(folder, later) == _expected_digest(folder)
        assert later.stats == {"hits": 0, "misses": 2}
    assert len(caplog.records) == 2  # once per submit
    message = caplog.records[0].getMessage()
    assert "weight hash cache unusable, hashing weight files in full each time" in message
    assert message.startswith(f"{where}: ") and message.endswith(
        f"(FileExistsError: [Errno 17] File exists: '{tmp_path / 'blocked'}')")


@pytest.mark.slow
def test_run_skips_a_touched_folder_and_redoes_a_changed_one(tmp_path, folder):
    """End to end through `mono-quant run` (the embedded runner): the cache lives in the data
    folder, next to catalog.db."""
    env = base_env(MONO_QUANT_DATA_DIR=str(tmp_path / "data"))
    env.pop("MONO_QUANT_CATALOG_URL", None)
    env.pop("MONO_QUANT_STORAGE_ROOT", None)
    manifest = tmp_path / "jobs.json"
    manifest.write_text(json.dumps({"jobs": [{"name": "llama", "model": f"hf:{folder}"}]}))

    def run() -> str:
        out = cli("run", str(manifest), "--quiet", env=env, timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout

    run()
    assert (tmp_path / "data" / CACHE_FILE).is_file()
    _bump_mtime(folder / "model.safetensors")
    assert "exists (use --force to redo)" in run()
    LLAMA.build(seed=7).save_pretrained(folder)
    assert "exists (use --force to redo)" not in run()
    with Catalog(Settings.from_env(env).catalog_url).begin() as session:
        jobs = session.scalars(select(Job)).all()
        assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * 2
        assert jobs[0].idempotency_key != jobs[1].idempotency_key
