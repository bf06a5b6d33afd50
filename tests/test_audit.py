"""Restore history and audit: who restored what, where, why; kept through a catalog rebuild."""

from __future__ import annotations

import json
import os
import socket

from insite_console import who


def test_restore_over_production_needs_a_reason_and_writes_nothing_without_one(workspace):
    (workspace.source / "a.txt").write_text("production data\n")
    backup = json.loads(workspace.cli("backup", "tree", "--json", check=True).stdout)
    (workspace.source / "a.txt").write_text("changed since\n")
    refused = workspace.cli("restore", backup["id"], "--target", "/", "--yes")
    assert refused.returncode != 0
    assert "restore over production needs a reason or ticket id" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (workspace.source / "a.txt").read_text() == "changed since\n"
    assert json.loads(workspace.cli("restores", "--json", check=True).stdout) == []
    plan = json.loads(workspace.cli("restore", backup["id"], "--target", "/", "--dry-run", "--json",
                                    check=True).stdout)
    assert plan["over_source"] is True and plan["reason"] is None


def test_restores_lists_who_what_where_why_and_survives_a_catalog_rebuild(workspace):
    (workspace.source / "a.txt").write_text("hello\n")
    (workspace.source / "b.txt").write_text("other\n")
    backup = json.loads(workspace.cli("backup", "tree", "--json", check=True).stdout)
    target = workspace.root / "beside"
    done = json.loads(workspace.cli("restore", backup["id"], "--target", str(target), "--include", "**/a.txt",
                                    "--reason", "INC-42: a.txt deleted", "--json", check=True).stdout)
    assert done["status"] == "succeeded" and done["over_source"] is False
    assert workspace.restored(target).joinpath("a.txt").read_text() == "hello\n"

    def listed() -> list[dict]:
        return json.loads(workspace.cli("restores", "--json", check=True).stdout)

    before = listed()
    assert len(before) == 1
    entry = before[0]
    assert entry["kind"] == "restore" and entry["id"] == done["id"] and entry["status"] == "succeeded"
    assert (entry["user"], entry["host"], entry["origin"]) == (who.user(), socket.gethostname(), "cli")
    assert entry["what"] == {"backup_id": backup["id"], "policy": "tree", "includes": ["**/a.txt"]}
    assert entry["target"] == str(target) and entry["reason"] == "INC-42: a.txt deleted"
    assert entry["files"] == 1 and entry["duration_seconds"] is not None and entry["duration_seconds"] >= 0

    workspace.close()
    os.unlink(workspace.root / "state" / "catalog.sqlite")
    assert listed() == []
    rebuilt = json.loads(workspace.cli("catalog", "rebuild", "--json", check=True).stdout)
    assert rebuilt["restores_added"] == [done["id"]]
    assert listed() == before

    text = workspace.cli("restores", check=True).stdout
    assert "INC-42: a.txt deleted" in text and f"{who.user()}@" in text and str(target) in text
