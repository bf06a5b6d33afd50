"""One backup: summary, manifest, parent chain, verification history, stored files, log."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.markup import escape
from textual.widgets import Header, Static, TabbedContent, TabPane

from insite_console.tui import commands, model
from insite_console.tui.messages import TreeLoaded
from insite_console.tui.screens.actions import BackupActions
from insite_console.tui.screens.base import InsiteScreen
from insite_console.tui.widgets.backup_detail import BackupDetail, model_error
from insite_console.tui.widgets.footer import InsiteFooter
from insite_console.tui.widgets.stored_tree import StoredTree


class BackupDetailScreen(BackupActions, InsiteScreen):
    SCOPE = "detail"
    BINDINGS = commands.bindings("detail")

    def __init__(self, backup: dict) -> None:
        super().__init__()
        self.backup = backup

    def current_backup(self) -> dict | None:
        return self.backup

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        with TabbedContent(id="detail-tabs"):
            with TabPane("Summary", id="tab-summary"):
                yield BackupDetail(id="detail")
            with TabPane("Files", id="tab-files"):
                yield Static("reading the stored tree…", id="files-status")
                yield StoredTree(id="files")
            with TabPane("Log", id="tab-log"):
                yield Static(id="run-log")
        yield InsiteFooter()

    def on_mount(self) -> None:
        self.query_one(BackupDetail).show(self.backup)
        self.show_log()
        # a verify (started here or anywhere) or a forget shows while the details are open
        self.watch(self.app, "catalog_version", lambda _: self.after_change() if self.is_active else None,
                   init=False)
        if self.backup["status"] == "succeeded" and self.backup.get("source_type", "files") == "files":
            self.load_tree()
        else:
            self.query_one("#files-status", Static).update("No stored files to browse (the backup did not complete"
                                                          " or is not a file tree).")

    def show_log(self) -> None:
        run_id = self.backup.get("run_id") or self.backup["id"]
        events = list(reversed(self.app.workspace.catalog.events(run_id, limit=200)))
        lines = []
        for event in events:
            at = model.parse_time(event["at"])
            mark = {"warning": "[$warning]▲[/]", "error": "[$error]✗[/]"}.get(event["level"], "·")
            lines.append(f"[dim]{at:%H:%M:%S}[/] {mark} {escape(event['message'])}" if at else escape(event["message"]))
        self.query_one("#run-log", Static).update("\n".join(lines) or "No events recorded for this run.")

    @work(thread=True, exclusive=True, group="tree", exit_on_error=False)
    def load_tree(self) -> None:
        try:
            entries, truncated = self.app.read_tree(self.backup, limit=50_000)
            self.post_message(TreeLoaded(self.backup["id"], entries, truncated))
        except Exception as exc:
            self.post_message(TreeLoaded(self.backup["id"], [], False, model_error(exc)))

    @on(TreeLoaded)
    def tree_loaded(self, message: TreeLoaded) -> None:
        status = self.query_one("#files-status", Static)
        if message.error:
            status.update(f"[$error]✗ cannot read the stored tree:[/] {escape(message.error)}")
            return
        files = sum(1 for e in message.entries if e.type == "file")
        status.update(f"{len(message.entries):,} entries, {files:,} files"
                      + (" (first 50,000 shown)" if message.truncated else "") + " · enter/space: open a folder")
        self.query_one(StoredTree).load(message.entries, message.truncated)

    def action_back(self) -> None:
        self.app.pop_screen()

    def after_change(self) -> None:
        if self.app.workspace.catalog.backup(self.backup["id"]) is None:
            self.app.pop_screen()
        else:
            self.query_one(BackupDetail).refresh_verifications()
