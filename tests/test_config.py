"""config.toml validation: every problem named with file, key and what is expected; exit 2."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from insite_console import config
from insite_console.errors import ConfigError


def _load(tmp_path, text: str):
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(text))
    return config.load(path), path


GOOD = """
[storage.local]
type = "local"
path = "repo"

[source.app]
type = "files"
paths = ["."]

[policy.app]
source = "app"
storage = "local"
schedule = "*/15 * * * *"
rpo = "15m"
retention = { keep_last = 3, keep_daily = 7 }
"""


def test_valid_config_loads_with_defaults_and_resolved_paths(tmp_path):
    cfg, path = _load(tmp_path, GOOD)
    assert cfg.storages["local"]["path"] == str(tmp_path / "repo")
    assert cfg.sources["app"]["paths"] == [str(tmp_path / ".")]
    assert cfg.policies["app"]["type"] == "incremental" and cfg.policies["app"]["compression"] == "zstd"
    assert cfg.catalog_path == tmp_path / "state" / "catalog.sqlite"
    assert cfg.encryption == {"passphrase_env": "INSITE_PASSPHRASE"}


@pytest.mark.parametrize("change, expected", [
    ('[policy.app]\nsource = "app"\nstorage = "local"\nshedule = "x"\n', "policy.app.shedule: unknown key"),
    ('[policy.app]\nsource = "app"\nstorage = "local"\nrpo = 15\n', 'policy.app.rpo: expected a duration such as "15m"'),
    ('[policy.app]\nsource = "nope"\nstorage = "local"\n', "policy.app.source: no [source.nope] is defined (sources: app)"),
    ('[policy.app]\nsource = "app"\nstorage = "s9"\n', "policy.app.storage: no [storage.s9] is defined"),
    ('[policy.app]\nsource = "app"\nstorage = "local"\nschedule = "61 * * * *"\n', "policy.app.schedule: expected a valid 5-field cron"),
    ('[policy.app]\nsource = "app"\nstorage = "local"\nretention = { keep_last = -1 }\n', "policy.app.retention: expected a table of keep_last"),
    ('[policy.app]\nsource = "app"\nstorage = "local"\nretention = { keep_forever = 1 }\n', 'unknown key "keep_forever"'),
    ('[policy.app]\nsource = "app"\nstorage = "local"\ntype = "weekly"\n', 'policy.app.type: expected one of "full", "incremental", "differential"'),
    ('[policy.app]\nstorage = "local"\n', "policy.app.source: missing (required)"),
    ('[storage.x]\ntype = "ftp"\n', "storage.x.type: expected one of 'local', 's3', 'gcs', 'azure'"),
    ('[source.db]\ntype = "postgresql"\n', "source.db.dsn: missing (required)"),
    ('[bogus]\nx = 1\n', "[bogus]: unknown table"),
])
def test_each_problem_names_file_key_and_expectation(tmp_path, change, expected):
    base = GOOD.split("[policy.app]")[0]
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, base + change)
    message = str(info.value)
    assert expected in message
    assert str(tmp_path / "config.toml") in message


def test_all_problems_are_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, """
        [source.app]
        type = "files"
        paths = "/not/a/list"
        [policy.app]
        source = "app"
        storage = "missing"
        rpo = "soon"
        """)
    assert len(info.value.problems) == 3


def test_malformed_toml_exits_2_without_traceback(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[storage.local\ntype = ")
    result = subprocess.run([sys.executable, "-m", "insite_console", "-c", str(path), "status"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_points_at_demo(tmp_path):
    result = subprocess.run([sys.executable, "-m", "insite_console", "-c", str(tmp_path / "nope.toml"), "status"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "config file not found" in result.stderr and "demo" in result.stderr


def test_config_written_back_round_trips(tmp_path):
    cfg, path = _load(tmp_path, GOOD)
    raw = dict(cfg.raw)
    raw["policy"]["app"]["rpo"] = "5m"
    config.write(raw, path)
    assert config.load(path).policies["app"]["rpo"] == "5m"
    raw["policy"]["app"]["rpo"] = "never"
    with pytest.raises(ConfigError):
        config.write(raw, path)
    assert config.load(path).policies["app"]["rpo"] == "5m"  # a bad edit never replaces a good file


def test_repository_example_config_is_the_demo_default():
    from importlib import resources
    from pathlib import Path

    packaged = resources.files("insite_console.demo").joinpath("config.toml").read_text()
    assert (Path(__file__).parent.parent / "config.toml").read_text() == packaged


@pytest.mark.parametrize("source", [
    '[source.db]\ntype = "postgresql"\ndsn = "postgresql://backup:s3cret@127.0.0.1/app"\n',
    '[source.db]\ntype = "postgresql"\ndsn = "host=127.0.0.1 user=backup password=s3cret dbname=app"\n',
    '[source.db]\ntype = "postgresql"\ndsn = "postgresql://backup@127.0.0.1/app?password=s3cret"\n',
    '[source.db]\ntype = "redis"\nurl = "redis://:s3cret@127.0.0.1:6379/0"\n',
])
def test_passwords_in_the_config_file_are_refused(tmp_path, source):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, GOOD + source)
    message = str(info.value)
    assert "source.db." in message and "holds a password" in message
    assert "s3cret" not in message



@pytest.mark.parametrize("section", ["storage", "source", "policy", "group", "recovery"])
@pytest.mark.parametrize("text, expected", [
    ("{s} = 1\n", "[{s}] must contain named tables like [{s}.NAME]"),  # not a table at all
    ("[{s}]\nbroken = 1\n", "{s}.broken: must be a table"),              # [group] x = 1, not [group.x]
])
def test_a_named_table_section_of_the_wrong_shape_is_named(tmp_path, section, text, expected):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text.format(s=section))
    assert expected.format(s=section) in str(info.value)
