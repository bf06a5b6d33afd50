"""Malformed or hostile repository objects and config files: a clean InsiteError naming the
object, never a traceback, never trust."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from insite_console import backup, config as config_module, restore
from insite_console.errors import InsiteError, IntegrityError, RepositoryError
from insite_console.repo import keys, objects
from insite_console.repo.repository import FORMAT_NAME, read_config
from insite_console.storage.local import LocalStorage


def _only_key(workspace) -> Path:
    [key] = (workspace.root / "repo" / "keys").iterdir()
    return key


@pytest.mark.parametrize("damage", [
    lambda k: "not json at all",
    lambda k: json.dumps([1, 2]),
    lambda k: json.dumps({key: value for key, value in k.items() if key != "salt"}),
    lambda k: json.dumps({**k, "data": "%%% not base64"}),
    lambda k: json.dumps({**k, "n": "65536"}),
])
def test_a_malformed_key_file_is_a_clean_error(workspace, damage):
    key = _only_key(workspace)
    key.write_text(damage(json.loads(key.read_text())))
    with pytest.raises(RepositoryError, match=f"damaged: key file keys/{key.name}"):
        workspace.reopen().repository("local")
    workspace.close()
    result = workspace.cli("backups", "--json")  # opens no repository: still works
    assert result.returncode == 0
    result = workspace.cli("key", "list")
    assert result.returncode == 1 and "Traceback" not in result.stderr and key.name in result.stderr


def test_unbounded_scrypt_parameters_are_refused_before_running(workspace):
    key = _only_key(workspace)
    good = key.read_text()
    (key.parent / "0000000000000000").write_text(json.dumps({**json.loads(good), "n": 2**40, "r": 8}))
    started = time.monotonic()
    repo = workspace.reopen().repository("local")  # the good key still opens
    assert repo.key_id == key.name and time.monotonic() - started < 5
    key.unlink()
    with pytest.raises(RepositoryError, match=r"scrypt parameter n=1099511627776 is outside 1\.\.1048576"):
        workspace.reopen().repository("local")


def test_config_id_must_be_hex_as_it_names_a_cache_folder(workspace):
    path = workspace.root / "repo" / "config"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "id": "../../../tmp/elsewhere"}))
    with pytest.raises(RepositoryError, match="invalid id '../../../tmp/elsewhere'"):
        workspace.reopen().repository("local")
    assert not Path("/tmp/elsewhere").exists()


def test_a_swapped_index_object_is_refused(workspace, tmp_path):
    (workspace.source / "a").write_bytes(os.urandom(5000))
    first = backup.run(workspace.ws, "tree", "full")
    (workspace.source / "b").write_bytes(os.urandom(5000))
    backup.run(workspace.ws, "tree", "full")
    index_dir = workspace.root / "repo" / "index"
    victim, *others = sorted(index_dir.iterdir(), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    victim.write_bytes(others[0].read_bytes())  # authenticates (same key, same associated data)
    workspace.close()
    shutil.rmtree(workspace.root / "state" / "cache")
    repo = workspace.ws.repository("local")
    assert "does not match its name (swapped or corrupted)" in repo.damaged_indexes[victim.name]
    restore.run(workspace.ws, first["id"], str(tmp_path / "t"))  # the other objects still serve


@pytest.mark.parametrize("change, message", [
    ({"tree": "not a list"}, "tree is not a list"),
    ({"tree": [["zz", 1]]}, r"tree is not a list of \[chunk id, length\]"),
    ({"id": "someone-else"}, "names backup 'someone-else'"),
    ({"version": "1"}, "invalid version"),
    ({"warnings": None}, "warnings is not a list"),
])
def test_a_manifest_with_wrong_fields_is_a_clean_error(workspace, tmp_path, change, message):
    (workspace.source / "f").write_text("x")
    result = backup.run(workspace.ws, "tree", "full")
    repo = workspace.ws.repository("local")
    manifest = {**repo.load_manifest(result["id"]), **change}
    repo.put_sealed_object("snapshots/" + result["id"], json.dumps(manifest).encode(),
                           aad=b"manifest:" + result["id"].encode())
    with pytest.raises(IntegrityError, match=message):
        repo.load_manifest(result["id"])
    workspace.close()
    cli = workspace.cli("restore", result["id"], "--target", str(tmp_path / "t"))
    assert cli.returncode == 1 and "Traceback" not in cli.stderr and f"snapshots/{result['id']}" in cli.stderr


# ----- fuzzing: every decoder gives a clean error or a value, never another exception -----

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20)
_hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
_ints = st.integers(-5, 2**33) | _json_values
_blob = st.lists(st.one_of(_hex64, _ints), min_size=0, max_size=6)
_index_bodies = st.fixed_dictionaries({"packs": st.lists(st.fixed_dictionaries(
    {"id": _hex64 | _json_values, "size": _ints, "blobs": st.lists(_blob, max_size=3) | _json_values}), max_size=3)
    | _json_values}) | _json_values
_manifests = st.fixed_dictionaries({
    "version": st.just(1) | _json_values, "id": st.just("b1") | _json_values, "tree": st.lists(
        st.lists(_hex64 | _ints, max_size=3), max_size=3) | _json_values,
    **{key: st.text(max_size=5) | _json_values for key in ("policy", "source", "source_type", "type",
                                                            "started_at", "finished_at")},
    "totals": st.just({}) | _json_values, "warnings": st.just([]) | _json_values,
    "parent_id": st.none() | _json_values})
# 200 keeps CI short; the reliability suite's long variant (INSITE_RELIABILITY_LONG=1) runs
# 100,000 a decoder, and INSITE_FUZZ_EXAMPLES sets any other count
_EXAMPLES = os.environ.get("INSITE_FUZZ_EXAMPLES") or ("100000" if os.environ.get("INSITE_RELIABILITY_LONG") else "200")
_fuzz = settings(max_examples=int(_EXAMPLES), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _clean(call) -> None:
    try:
        call()
    except InsiteError:
        pass


@_fuzz
@given(body=_index_bodies, raw=st.binary(max_size=200), name_matches=st.booleans())
def test_fuzz_index_decoder(body, raw, name_matches):
    for plain in (json.dumps(body).encode(), raw):
        name = hashlib.sha256(plain).hexdigest() if name_matches else "0" * 64
        _clean(lambda: objects.decode_index(name, plain, "index object"))


@_fuzz
@given(manifest=_manifests, raw=st.binary(max_size=200))
def test_fuzz_manifest_and_tree_decoders(manifest, raw):
    for plain in (json.dumps(manifest).encode(), raw):
        _clean(lambda: objects.decode_manifest("b1", plain, "manifest"))
        _clean(lambda: objects.decode_tree_line(plain, "file listing"))
    line = json.dumps({"path": manifest["policy"], "type": "file", "chunks": manifest["tree"],
                       "size": manifest["version"]}).encode()
    _clean(lambda: objects.decode_tree_line(line, "file listing"))


_key_files = st.fixed_dictionaries({
    "kdf": st.just("scrypt") | _json_values, "n": st.sampled_from([2, 3, 1024, 2**21, 0, -1]) | _json_values,
    "r": st.integers(-1, 40) | _json_values, "p": st.integers(-1, 20) | _json_values,
    "salt": st.just("c2FsdA==") | _json_values, "data": st.just("AAAA") | st.binary(max_size=60).map(
        lambda b: __import__("base64").b64encode(b).decode()) | _json_values})


@_fuzz
@given(key_file=_key_files, material=st.binary(max_size=120) | _json_values.map(lambda v: json.dumps(v).encode()))
def test_fuzz_key_file_and_master_key_decoders(key_file, material):
    def unwrap():
        checked = keys.check_key_file(key_file, "key file")
        if checked["n"] <= 1024 and checked["r"] <= 8 and checked["p"] <= 2:  # keep the fuzz fast
            keys.unwrap(checked, "passphrase")
    _clean(unwrap)
    _clean(lambda: keys.MasterKey.from_bytes(material))


@_fuzz
@given(config=st.fixed_dictionaries({"format": st.just(FORMAT_NAME) | _json_values,
                                     "version": st.just(1) | _json_values, "id": st.just("a" * 32) | _json_values,
                                     "chunker": st.fixed_dictionaries({k: st.integers(0, 2**27) | _json_values
                                                                       for k in ("min", "avg", "max")}) | _json_values}),
       raw=st.binary(max_size=100))
def test_fuzz_repository_config(tmp_path_factory, config, raw):
    storage = LocalStorage("fuzz", tmp_path_factory.mktemp("cfg"))
    for data in (json.dumps(config).encode(), raw):
        storage.put("config", data)
        _clean(lambda: read_config(storage))


_config_values = _json_values.filter(lambda v: v is not None)
_tables = st.dictionaries(st.sampled_from(["type", "path", "paths", "source", "storage", "schedule", "retention",
                                           "copy_to", "dsn", "url", "rpo", "keep_last", "exclude", "mode",
                                           "passphrase_file", "threads", "pack_size", "timezone"]),
                          st.sampled_from(["local", "files", "postgresql", "redis", "s3", "x"]) | _config_values,
                          max_size=6)


@_fuzz
@given(raw=st.fixed_dictionaries({}, optional={
    "storage": st.dictionaries(st.sampled_from(["local", "s"]), _tables, max_size=2) | _config_values,
    "source": st.dictionaries(st.sampled_from(["tree", "db"]), _tables, max_size=2) | _config_values,
    "policy": st.dictionaries(st.sampled_from(["tree", "p"]), _tables, max_size=2) | _config_values,
    "engine": _tables | _config_values, "encryption": _tables | _config_values,
    "catalog": _tables | _config_values, "console": _tables | _config_values, "dr": _tables | _config_values,
    "other": _config_values}))
@example(raw={"storage": {"local": {"type": []}}})  # found by this test: TypeError in validate
@example(raw={"policy": {"p": {"copy_to": [[1]]}}})
def test_fuzz_config_loader(tmp_path_factory, raw):
    import tomli_w

    path = tmp_path_factory.mktemp("conf") / "config.toml"
    try:
        path.write_text(tomli_w.dumps(raw))
    except (TypeError, ValueError):
        path.write_text(repr(raw))  # not representable in TOML: then it is a syntax error to load
    _clean(lambda: config_module.load(path))
