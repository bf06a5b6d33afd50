"""A backup's details: catalog facts at once, the manifest summary when a worker has read it."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.markup import escape
from textual.widgets import Static

from insite_console.tui import model
from insite_console.tui.messages import DetailLoaded


def summary_markup(ws, backup: dict) -> str:
    label, role = model.status_label(backup["status"])
    storages = ws.catalog.backup_storages(backup["id"])
    lines = [
        f"[b][${role}]{escape(label)}[/][/]  [b]{escape(backup['type'])}[/] backup [b]{escape(backup['id'])}[/]",
        f"Policy [b]{escape(backup['policy'])}[/] · source {escape(backup['source'])} "
        f"({escape(backup.get('source_type') or '?')}) · storage {escape(backup['storage'])}",
        f"Started {model.short_time(backup['started_at'])} UTC · took "
        f"{model.duration_text(backup['started_at'], backup['finished_at'])}",
    ]
    if backup["status"] == "succeeded":
        lines.append(f"Read {model.size_text(backup['bytes_read'])} · stored {model.size_text(backup['bytes_stored'])}"
                     f" · {backup['files']:,} files")
        lines.append("Copies on: " + (escape(", ".join(storages)) if storages else "—"))
    if backup.get("error"):
        lines.append(f"[$error]Error:[/] {escape(backup['error'])}")
    return "\n".join(lines)


def chain_markup(ws, backup: dict) -> str:
    chain = []
    current = backup
    seen = set()
    while current is not None and current.get("parent_id") and len(chain) < 12:
        if current["parent_id"] in seen:
            break
        seen.add(current["parent_id"])
        parent = ws.catalog.backup(current["parent_id"])
        if parent is None:
            chain.append(f"{escape(current['parent_id'])} (not in the catalog: forgotten?)")
            break
        chain.append(f"{escape(parent['id'])} {escape(parent['type'])} {model.short_time(parent['started_at'])} "
                     f"{model.status_label(parent['status'])[0]}")
        current = parent
    if not chain:
        return "[b]Parent chain[/]\n  none: a full backup stands alone"
    return "[b]Parent chain[/] (newest first)\n" + "\n".join(f"  ← {line}" for line in chain)


def verifications_markup(ws, backup_id: str) -> str:
    rows = ws.catalog.verifications(backup_id, limit=8)
    if not rows:
        return "[b]Verification history[/]\n  never verified (press v)"
    lines = ["[b]Verification history[/]"]
    for row in rows:
        label, role = model.status_label(row["status"])
        lines.append(f"  [${role}]{escape(label)}[/] {'deep ' if row['deep'] else 'quick'} "
                     f"{model.short_time(row['started_at'])} on {escape(row['storage'])} · {row['objects']} objects"
                     + (f" · {escape(row['problems'][0])}" if row["problems"] else ""))
    return "\n".join(lines)


def manifest_markup(manifest: dict) -> str:
    totals = manifest.get("totals", {})
    lines = ["[b]Manifest[/]",
             f"  host {escape(str(manifest.get('hostname', '?')))} · compression {escape(str(manifest.get('compression')))}"]
    if manifest.get("paths"):
        lines.append("  paths " + escape(", ".join(manifest["paths"])))
    if totals:
        lines.append(f"  {totals.get('files', 0):,} files · {totals.get('dirs', 0):,} dirs · "
                     f"{totals.get('symlinks', 0):,} symlinks · {totals.get('files_reused', 0):,} unchanged reused")
    info = manifest.get("source_info") or {}
    if info.get("baselines"):
        lines.append(f"  baselines recorded for {len(info['baselines'])} object(s)")
    warnings = manifest.get("warnings") or []
    if warnings:
        lines.append(f"  [$warning]▲ {len(warnings)} warning(s)[/]: " + escape(warnings[0]))
    return "\n".join(lines)


class BackupDetail(VerticalScroll):
    """Shows one backup. `show(backup)` fills the catalog part at once; the manifest follows."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="detail")
        self.backup: dict | None = None

    def compose(self) -> ComposeResult:
        yield Static("Select a backup", id="detail-summary")
        yield Static("", id="detail-manifest")
        yield Static("", id="detail-chain")
        yield Static("", id="detail-verify")

    def show(self, backup: dict | None) -> None:
        self.backup = backup
        ws = self.app.workspace
        if backup is None:
            self.query_one("#detail-summary", Static).update("No backup selected")
            for name in ("manifest", "chain", "verify"):
                self.query_one(f"#detail-{name}", Static).update("")
            return
        self.query_one("#detail-summary", Static).update(summary_markup(ws, backup))
        self.query_one("#detail-chain", Static).update(chain_markup(ws, backup))
        self.query_one("#detail-verify", Static).update(verifications_markup(ws, backup["id"]))
        manifest_view = self.query_one("#detail-manifest", Static)
        if backup["status"] != "succeeded":
            manifest_view.update("[b]Manifest[/]\n  none: the backup did not complete")
            return
        cached = self.app.manifest_cache.get(backup["id"])
        if cached is not None:
            manifest_view.update(manifest_markup(cached))
        else:
            manifest_view.update("[b]Manifest[/]\n  reading from storage…")
            self.load_manifest(backup)

    @work(thread=True, exclusive=True, group="detail", exit_on_error=False)
    def load_manifest(self, backup: dict) -> None:
        try:
            manifest = self.app.read_manifest(backup)
            self.post_message(DetailLoaded(backup["id"], manifest))
        except Exception as exc:  # shown as a message; the detail pane must never crash the console
            self.post_message(DetailLoaded(backup["id"], None, model_error(exc)))

    def on_detail_loaded(self, message: DetailLoaded) -> None:
        message.stop()
        if self.backup is None or message.backup_id != self.backup["id"]:
            return
        view = self.query_one("#detail-manifest", Static)
        if message.manifest is not None:
            view.update(manifest_markup(message.manifest))
        else:
            view.update(f"[b]Manifest[/]\n  [$error]✗ cannot read it:[/] {escape(message.error or '')}")

    def refresh_verifications(self) -> None:
        if self.backup is not None:
            self.query_one("#detail-verify", Static).update(verifications_markup(self.app.workspace, self.backup["id"]))


def model_error(exc: BaseException) -> str:
    from insite_console.errors import InsiteError

    return str(exc) if isinstance(exc, InsiteError) else f"{type(exc).__name__}: {exc}"
