"""Storage faults seen by whole CLI runs, where tests/test_storage_faults.py and
tests/test_faults.py test the backends and the engine in-process: a backup and a restore
through a proxy that injects 5xx errors, connection resets and stalled responses in front of
moto S3; an outage beyond the retry budget; a real full disk (a small tmpfs) at spread
levels of free space. After each failure nothing is listed as succeeded, the repository is
consistent, and once the fault is gone the run succeeds and restores byte-identical."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap

import pytest

from insite_console.workspace import Workspace
from tests.cloud_servers import *  # noqa: F401,F403 - the server fixtures
from tests.cloud_servers import FaultProxy, unique_name
from tests.conftest import WorkspaceHelper
from tests.reliability.checks import MIB, Snapshot, assert_consistent, assert_restores, make_workspace, write_random
from tests.reliability.conftest import LONG
from tests.treeutil import assert_same_tree, build_tree


def _succeeded(helper) -> list[str]:
    return [row["id"] for row in json.loads(helper.cli("backups", "--json", check=True).stdout)
            if row["status"] == "succeeded"]


@pytest.mark.cloud
def test_backup_and_restore_through_errors_resets_and_stalls_on_s3(s3_server, tmp_path, figures):
    proxy = FaultProxy(s3_server.port).start()
    try:
        bucket = unique_name()
        source = tmp_path / "src"
        build_tree(source, files=30)
        write_random(source / "large.bin", 6 * MIB, seed=5)  # multipart pack uploads
        config = tmp_path / "config.toml"
        config.write_text(textwrap.dedent(f"""
            [catalog]
            path = "state/catalog.sqlite"
            [encryption]
            passphrase_env = "INSITE_PASSPHRASE"
            [storage.s3]
            type = "s3"
            bucket = "{bucket}"
            endpoint_url = "{proxy.url}"
            prefix = "rel"
            retries = 5
            retry_base_delay = 0.01
            retry_max_delay = 0.05
            read_timeout = 1
            part_size = "5MiB"
            [source.tree]
            type = "files"
            paths = ["{source}"]
            [policy.tree]
            source = "tree"
            storage = "s3"
            type = "incremental"
            """))
        helper = WorkspaceHelper(tmp_path, source, config)
        helper.cli("init", "--create", check=True)
        proxy.default_path = "rel"  # object requests only

        # transient faults within the retry budget: the run succeeds
        proxy.fail(2, status=503, code="SlowDown", methods={"PUT"})
        proxy.fail(1, status=500, code="InternalError", methods={"GET"})
        proxy.reset(2, methods={"PUT"})
        proxy.delay(1, 2.5, methods={"PUT"})  # longer than read_timeout: timed out and sent again
        first = helper.cli("backup", "tree", "--json")
        assert first.returncode == 0, first.stderr
        outcomes = proxy.outcomes()
        for fault in ("failed 503", "failed 500", "reset"):
            assert fault in outcomes, outcomes  # the faults did happen
        figures["s3 faults injected"] += outcomes.count("failed 503") + outcomes.count("failed 500") \
            + outcomes.count("reset") + 1
        proxy.clear()
        proxy.delay(3, 0.3)  # slow but within the timeout
        proxy.reset(1, methods={"GET"})
        restored = helper.cli("restore", json.loads(first.stdout)["id"], "--target", str(tmp_path / "t"))
        assert restored.returncode == 0, restored.stderr
        assert_same_tree(source, tmp_path / "t" / str(source).lstrip("/"))
        figures["s3 faults injected"] += 4

        # an outage longer than the retry budget: a clean failure, nothing listed as succeeded
        proxy.clear()
        (source / "more.bin").write_bytes(os.urandom(2 * MIB))
        proxy.fail(10_000, status=503, methods={"PUT"}, path_contains="/rel/data/")  # packs, after the lock
        outage = helper.cli("backup", "tree", "--json")
        assert outage.returncode == 1 and "Traceback" not in outage.stderr, outage.stderr
        assert "gave up after 6 attempts" in outage.stderr and "cannot upload data/" in outage.stderr, outage.stderr
        assert _succeeded(helper) == [json.loads(first.stdout)["id"]]
        figures["s3 outages"] += 1
        proxy.clear()
        assert_consistent(config, storages=("s3",))
        again = helper.cli("backup", "tree", "--json")
        assert again.returncode == 0, again.stderr
        ws = Workspace.load(config)
        try:
            assert_restores(ws, json.loads(again.stdout)["id"], source, tmp_path / "t2")
        finally:
            ws.close()
    finally:
        proxy.stop()


@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem that fills up: a tmpfs mounted for this test (needs root)."""
    mount = tmp_path / "ws" / "disk"
    mount.mkdir(parents=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount, leave: int) -> None:
    """Leave about `leave` bytes free on the mount."""
    (mount / "filler").unlink(missing_ok=True)
    st = os.statvfs(mount)
    size = st.f_bavail * st.f_frsize - leave
    with open(mount / "filler", "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, max(0, size))


def test_full_disk_at_spread_levels_fails_cleanly_then_succeeds(small_disk, tmp_path, figures):
    helper = make_workspace(tmp_path / "ws", storage_path="disk/repo")
    build_tree(helper.source, files=20)
    helper.cli("backup", "tree", check=True)
    write_random(helper.source / "new.bin", 6 * MIB, seed=9)
    before = sum(p.stat().st_size for p in (small_disk / "repo").rglob("*") if p.is_file())
    snapshot = Snapshot(helper.root, names=("disk/repo", "state"))
    helper.cli("backup", "tree", check=True)  # how much one more backup writes
    needed = sum(p.stat().st_size for p in (small_disk / "repo").rglob("*") if p.is_file()) - before
    shares = (0.05, 0.3, 0.55, 0.8, 0.95, 0.99) if LONG else (0.05, 0.5, 0.95)
    for share in shares:
        snapshot.put_back()
        _fill(small_disk, int(needed * share))
        known = _succeeded(helper)
        result = helper.cli("backup", "tree")
        assert result.returncode == 1 and "no space left on device" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert _succeeded(helper) == known  # the failed run is not listed as succeeded
        figures["full disk levels"] += 1
        assert_consistent(helper.config)
        (small_disk / "filler").unlink()  # space freed
        rerun = helper.cli("backup", "tree", "--json")
        assert rerun.returncode == 0, rerun.stderr
        ws = Workspace.load(helper.config)
        try:
            assert_restores(ws, json.loads(rerun.stdout)["id"], helper.source, tmp_path / "t")
        finally:
            ws.close()
    shutil.rmtree(tmp_path / "ws-snapshot", ignore_errors=True)


@pytest.mark.parametrize("kind, settings", [
    ("s3", {"type": "s3", "bucket": "b", "endpoint_url": "http://127.0.0.1:9"}),
    ("gcs", {"type": "gcs", "bucket": "b", "endpoint_url": "http://127.0.0.1:9", "project": "p"}),
    ("azure", {"type": "azure", "container": "c", "connection_string_env": "INSITE_TEST_AZURE_OFFLINE"}),
])
def test_part_size_written_as_a_size_is_honoured(kind, settings, monkeypatch):
    """config.toml accepts part_size = "6MiB" (a size); the backends read it as one, where they
    used to stop with int()'s ValueError traceback (found by the S3 test above)."""
    from insite_console.storage import open_storage
    from tests.cloud_servers import AZURITE_ACCOUNT, AZURITE_KEY

    monkeypatch.setenv("INSITE_TEST_AZURE_OFFLINE", f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
                       f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:9/{AZURITE_ACCOUNT};")
    store = open_storage(kind, dict(settings, part_size="6MiB"))  # no request is made
    try:
        assert store.part_size == 6 * MIB
    finally:
        store.close()
