"""Verify, restore and forget, shared by the catalog and the backup detail screen."""

from __future__ import annotations

from textual import work

from insite_console import clock
from insite_console.tui.dialogs.confirm import ChoiceDialog, ConfirmDialog, MessageDialog


class BackupActions:
    """Mixin for screens with a current backup (`current_backup()`)."""

    def current_backup(self) -> dict | None:
        raise NotImplementedError

    def can_run(self, action: str) -> bool | None:
        if action in ("verify", "restore", "forget", "details"):
            backup = self.current_backup()
            if backup is None:
                return None
            if action in ("verify", "restore") and backup["status"] != "succeeded":
                return None  # a failed backup is never a restore point
            if action == "forget" and backup["status"] == "running":
                return None
        return True

    def action_verify(self) -> None:
        backup = self.current_backup()
        if backup is None or backup["status"] != "succeeded":
            return

        def chosen(choice: str | None) -> None:
            if choice:
                self.app.start_verify(backup["id"], deep=choice == "deep")

        self.app.push_screen(ChoiceDialog(
            f"Verify backup {backup['id']}",
            "Quick: every object is on storage with the right size (seconds).\n"
            "Deep: every object is read back, decrypted and its hash checked (reads all the data).",
            [("quick", "Quick"), ("deep", "Deep")]), chosen)

    def action_restore(self) -> None:
        backup = self.current_backup()
        if backup is not None and backup["status"] == "succeeded":
            self.app.open_restore(backup["id"])

    def action_forget(self) -> None:
        backup = self.current_backup()
        if backup is None or backup["status"] == "running":
            return
        ws = self.app.workspace
        children = ws.catalog.db.execute("SELECT COUNT(*) FROM backups WHERE parent_id = ?",
                                         (backup["id"],)).fetchone()[0]
        body = (f"Forget backup {backup['id']} ({backup['policy']}, {backup['type']}, "
                f"{backup['started_at']}, {backup['status']})?\n\n"
                "Its manifest is deleted from storage and its row from the catalog: it can no longer be "
                "restored. Data still used by other backups stays; `insite-console prune` frees the rest.")
        if children:
            body += (f"\n\n{children} later backup(s) name it as parent. They stay restorable (every "
                     "snapshot lists all its files), but their chain will show it as forgotten.")
        if backup["status"] == "succeeded" and ws.catalog.count_backups(policy=backup["policy"],
                                                                        status="succeeded") == 1:
            body = (f"▲ This is the LAST restore point of {backup['policy']}: once it is forgotten, nothing of "
                    f"{backup['policy']} can be restored until its next backup succeeds.\n\n" + body)
        self.app.push_screen(ConfirmDialog("Forget this backup?", body, yes_label="Forget"),
                             lambda yes: self._forget(backup) if yes else None)

    @work(thread=True, group="forget", exit_on_error=False)
    def _forget(self, backup: dict) -> None:
        ws = self.app.workspace
        errors = []
        if backup["status"] == "succeeded":
            storages = ws.catalog.backup_storages(backup["id"]) or [backup["storage"]]
            for name in storages:
                if name not in ws.config.storages:
                    continue
                try:
                    ws.repository(name).delete_manifest(backup["id"])
                except Exception as exc:  # reported below; the catalog row stays so nothing is hidden
                    errors.append(f"{name}: {exc}")
        if errors:
            self.app.call_from_thread(self.app.push_screen, MessageDialog(
                "Forget failed", "The backup was not forgotten:\n" + "\n".join(errors)))
            return
        ws.catalog.delete_backup(backup["id"])
        ws.catalog.event(None, f"backup {backup['id']} of {backup['policy']} forgotten from the console "
                               f"at {clock.iso(clock.now())}", level="warning")
        self.app.call_from_thread(self._forgotten, backup)

    def _forgotten(self, backup: dict) -> None:
        self.app.notify(f"■ backup {backup['id']} forgotten", timeout=5)
        self.app.manifest_cache.pop(backup["id"], None)
        self.app.catalog_version += 1
        self.after_change()

    def after_change(self) -> None:
        pass
