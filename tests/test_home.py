"""The data home does not depend on the current folder: env, then mono-quant.toml found
upward, then the per-user data folder; ``mono-quant where`` says which."""

from __future__ import annotations

import json

import pytest

from mono_quant.config import Settings, get_settings
from mono_quant.errors import BadConfigError
from mono_quant.scheduler import cli


def _clean_env(tmp_path) -> dict[str, str]:
    """No MONO_QUANT_* variables (platformdirs reads XDG_DATA_HOME from os.environ)."""
    return {}


def test_without_config_the_data_lives_in_the_user_folder_whatever_the_cwd(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    env = _clean_env(tmp_path)
    homes = []
    for folder in ("a", "b/c"):
        (tmp_path / folder).mkdir(parents=True)
        monkeypatch.chdir(tmp_path / folder)
        homes.append(Settings.from_env(env))
    assert homes[0].data_dir == homes[1].data_dir == tmp_path / "xdg" / "mono-quant"
    assert homes[0].catalog_url == f"sqlite:///{tmp_path / 'xdg' / 'mono-quant' / 'catalog.db'}"
    assert homes[0].data_dir_source == "the per-user data folder"
    assert not (tmp_path / "a" / "mono-quant-data").exists()


def test_config_file_is_found_upward_and_env_wins(tmp_path, monkeypatch):
    (tmp_path / "mono-quant.toml").write_text(
        'data_dir = "mq"\nbroker_url = "redis://queue:6379/3"\n')
    deep = tmp_path / "x" / "y"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    s = Settings.from_env(_clean_env(tmp_path))
    assert (s.data_dir, s.storage_root) == (tmp_path / "mq", tmp_path / "mq" / "artifacts")
    assert s.broker_url == "redis://queue:6379/3"
    assert (s.config_file, s.data_dir_source) == (tmp_path / "mono-quant.toml",
                                                   str(tmp_path / "mono-quant.toml"))
    s = Settings.from_env({**_clean_env(tmp_path), "MONO_QUANT_DATA_DIR": str(tmp_path / "e"),
                           "MONO_QUANT_BROKER_URL": "redis://other:1/0"})
    assert (s.data_dir, s.broker_url, s.data_dir_source) == (
        tmp_path / "e", "redis://other:1/0", "MONO_QUANT_DATA_DIR")


@pytest.mark.parametrize("text, message", [
    ('catalog = "x"\n', "unknown key 'catalog'; expected some of data_dir"),
    ("data_dir = 3\n", "data_dir must be a non-empty string, got 3"),
    ("data_dir = \n", "cannot read it as TOML"),
], ids=["unknown-key", "not-a-string", "not-toml"])
def test_bad_config_file_names_the_file_and_key(tmp_path, monkeypatch, text, message):
    (tmp_path / "mono-quant.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadConfigError, match=message) as e:
        Settings.from_env(_clean_env(tmp_path))
    assert str(tmp_path / "mono-quant.toml") in str(e.value)


def test_the_old_cwd_folder_is_still_used_where_it_holds_a_catalog(tmp_path, monkeypatch):
    (tmp_path / "mono-quant-data").mkdir()
    (tmp_path / "mono-quant-data" / "catalog.db").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env(_clean_env(tmp_path))
    assert s.data_dir == tmp_path / "mono-quant-data"
    assert s.data_dir_source.startswith("./mono-quant-data (the old default")


def test_where_prints_the_catalog_storage_and_broker(tmp_path, monkeypatch, capsys):
    (tmp_path / "mono-quant.toml").write_text(
        'data_dir = "mq"\nbroker_url = "redis://:secret@queue:6379/3"\n')
    monkeypatch.chdir(tmp_path)
    for name in ("MONO_QUANT_DATA_DIR", "MONO_QUANT_CATALOG_URL", "MONO_QUANT_STORAGE_ROOT",
                 "MONO_QUANT_BROKER_URL", "MONO_QUANT_REDIS_HOST", "MONO_QUANT_DB_HOST"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    try:
        assert cli.main(["where", "--json"]) == 0
    finally:
        get_settings.cache_clear()
    answer = json.loads(capsys.readouterr().out)
    assert answer == {
        "config_file": str(tmp_path / "mono-quant.toml"),
        "data_dir": str(tmp_path / "mq"),
        "data_dir_from": str(tmp_path / "mono-quant.toml"),
        "catalog_url": f"sqlite:///{tmp_path / 'mq' / 'catalog.db'}",
        "catalog_url_from": "default: catalog.db in the data folder",
        "storage_root": str(tmp_path / "mq" / "artifacts"),
        "storage_root_from": "default: artifacts/ in the data folder",
        "broker_url": "redis://:***@queue:6379/3",
        "broker_url_from": f"{tmp_path / 'mono-quant.toml'} (broker_url)",
    }


def test_where_names_the_variable_that_set_each_url(tmp_path, monkeypatch, capsys):
    """The environment wins over the file, and `where` says which variable did it."""
    (tmp_path / "mono-quant.toml").write_text('catalog_url = "sqlite:///file.db"\n')
    monkeypatch.chdir(tmp_path)
    for name in ("MONO_QUANT_DATA_DIR", "MONO_QUANT_CATALOG_URL", "MONO_QUANT_STORAGE_ROOT",
                 "MONO_QUANT_BROKER_URL", "MONO_QUANT_REDIS_HOST", "MONO_QUANT_DB_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MONO_QUANT_DB_HOST", "db.internal")
    monkeypatch.setenv("MONO_QUANT_STORAGE_ROOT", str(tmp_path / "store"))
    get_settings.cache_clear()
    try:
        assert cli.main(["where"]) == 0
    finally:
        get_settings.cache_clear()
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    # the file's catalog_url is what the catalog URL was built from, not the DB_HOST variable
    assert lines["catalog_url"] == "sqlite:///file.db"
    assert lines["catalog_url_from"] == f"{tmp_path / 'mono-quant.toml'} (catalog_url)"
    assert lines["storage_root_from"] == "environment (MONO_QUANT_STORAGE_ROOT)"
    assert lines["broker_url_from"].startswith("default: none (embedded mode")
