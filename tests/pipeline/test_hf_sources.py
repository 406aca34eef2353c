"""hf: sources: hub ids from the local cache, weight digests in job keys, bad folders."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil

import pytest

from mono_quant.errors import BadConfigError, BadInputError
from mono_quant.pipeline import parse_model_source
from mono_quant.pipeline.digest import weights_digest
from mono_quant.scheduler.manifest import parse_manifest
from tests.pipeline.archs import ARCHS

pytest.importorskip("transformers", reason="needs the 'hf' extra")

LLAMA = next(a for a in ARCHS if a.name == "llama-untied")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    LLAMA.build().save_pretrained(folder)
    return folder


def _fake_cache(cache, saved, repo="org/tiny", commit=COMMIT, ref="main"):
    """huggingface_hub's cache layout: blobs named by content hash, snapshots/<commit>/
    holding relative symlinks to them, refs/<ref> holding the commit."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in saved.iterdir():
        data = f.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    (root / "refs" / ref).write_text(commit)
    return snap


def test_hub_id_resolves_from_the_local_cache(tmp_path, saved, monkeypatch):
    snap = _fake_cache(tmp_path / "hub", saved)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    source = parse_model_source("hf:org/tiny")
    assert source.canonical()["target"] == "org/tiny"  # machine-independent key input
    assert source.folder == str(snap)
    assert type(source.load()).__name__ == "LlamaForCausalLM"
    assert parse_model_source(f"hf:org/tiny@{COMMIT}").folder == str(snap)
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # HF_HOME/hub
    assert parse_model_source("hf:org/tiny@main").folder == str(snap)


def test_a_cache_miss_names_the_id_the_revision_and_the_cache(tmp_path, saved, monkeypatch):
    _fake_cache(tmp_path / "hub", saved)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    for text, repo, rev in [("hf:org/tiny@v2", "org/tiny", "v2"),
                            ("hf:org/other", "org/other", "main")]:
        with pytest.raises(BadInputError) as err:
            parse_model_source(text).load()
        assert str(err.value).startswith(
            f"{text}: model {repo!r} at revision {rev!r} is not in the local Hugging Face "
            f"cache {tmp_path / 'hub'} (searched: HF_HUB_CACHE, else HF_HOME/hub); nothing is "
            "downloaded at run time")


def test_a_folder_wins_over_a_hub_id(tmp_path, saved, monkeypatch):
    shutil.copytree(saved, tmp_path / "org" / "tiny")
    monkeypatch.chdir(tmp_path)
    assert parse_model_source("hf:org/tiny").folder == str(tmp_path / "org" / "tiny")


def _key(folder) -> str:
    _, specs = parse_manifest({"jobs": [{"name": "a", "model": f"hf:{folder}"}]})
    return specs[0].idempotency_key


def test_changed_weights_are_a_new_job(tmp_path, saved):
    """The issue's finding: `run` skipped a job whose folder's weights had changed."""
    folder = shutil.copytree(saved, tmp_path / "m")
    first = _key(folder)
    assert _key(folder) == first  # stable while nothing changes
    LLAMA.build(seed=7).save_pretrained(folder)  # same names, shapes and size: new values
    assert _key(folder) != first


def test_digest_of_cache_snapshots_uses_the_blob_hashes(tmp_path, saved):
    snap = _fake_cache(tmp_path / "hub", saved)
    digest = weights_digest(snap)
    os.utime(snap / "model.safetensors", (0, 0), follow_symlinks=False)  # the link, not data
    assert weights_digest(snap) == digest
    assert weights_digest(saved) != digest  # a plain folder: the sha256 of each file


def _folder(tmp_path, saved, name):
    folder = shutil.copytree(saved, tmp_path / name)
    return folder, json.loads((folder / "config.json").read_text())


def test_unknown_architecture_is_bad_input(tmp_path, saved):
    folder, config = _folder(tmp_path, saved, "unknown")
    config.update(model_type="frobnicator", architectures=["FrobnicatorForCausalLM"])
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(BadInputError, match=r"transformers could not load the model: .*model "
                                            r"type `frobnicator`"):
        parse_model_source(f"hf:{folder}").load()


def test_heads_that_do_not_divide_the_hidden_size_are_bad_config(tmp_path, saved):
    folder, config = _folder(tmp_path, saved, "heads")
    config["num_attention_heads"] = 5
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(BadConfigError) as err:
        parse_model_source(f"hf:{folder}").load()
    assert f"{folder / 'config.json'} (fields hidden_size, num_attention_heads) is invalid" \
        in str(err.value)
    assert "The hidden size (64) is not a multiple of the number of attention heads (5)" \
        in str(err.value)


class _Payload:
    ran = False

    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_only_folder_is_refused_naming_the_file(tmp_path, saved, capsys):
    folder, _ = _folder(tmp_path, saved, "pickle")
    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"w": _Payload()}, f)
    with pytest.raises(BadInputError) as err:
        parse_model_source(f"hf:{folder}").load()
    assert str(err.value) == (
        f"hf:{folder}: {folder / 'pytorch_model.bin'} is a pickle checkpoint, which mono-quant "
        "does not load (pickles can run code); convert the folder to safetensors "
        "(model.save_pretrained(path, safe_serialization=True))")
    assert "this must never run" not in capsys.readouterr().out
