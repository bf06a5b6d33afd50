"""Live jobs: every running and recent run (this console, the scheduler, a cron CLI run)."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.markup import escape
from textual.widgets import DataTable, Header, ProgressBar, Static

from insite_console.tui import commands, model
from insite_console.tui.dialogs.confirm import ConfirmDialog
from insite_console.tui.screens.base import InsiteScreen, selected_key
from insite_console.tui.widgets.fit import Col, fill_table
from insite_console.tui.widgets.footer import InsiteFooter
from insite_console.tui.widgets.styles import role_style


# at 60 columns: what, of what, how far (the selected job's box below says the rest in full;
# "■ cancelled by USER@HOST" is cut where the columns need the room)
JOB_COLUMNS = [
    Col("status", "Status", min_width=len("■ cancelled")), Col("kind", "Job"), Col("subject", "Subject", max_width=20), Col("progress", "Progress", 1),
    Col("rate", "Speed", 5), Col("eta", "ETA", 2), Col("duration", "Took", 3), Col("phase", "Phase", 6),
    Col("origin", "Started by", 7, min_width=12), Col("started", "Started (UTC)", 4),
]


class JobsScreen(InsiteScreen):
    SCOPE = "jobs"
    BINDINGS = commands.bindings("jobs")

    def __init__(self) -> None:
        super().__init__()
        self._listed = False  # jobs were listed before: a newly running one may take the selection
        self._seen_running: set[str] = set()

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        with Vertical(id="jobs"):
            with Vertical(id="jobs-box", classes="box") as box:
                box.border_title = "Running and recent jobs"
                yield DataTable(id="job-table", cursor_type="row")
            with Vertical(id="job-detail", classes="box") as box:
                box.border_title = "Selected job"
                yield Static(id="job-facts")
                yield ProgressBar(id="job-progress", total=100, show_eta=False)
                yield Static(id="job-log", classes="log")
        yield InsiteFooter()

    def on_mount(self) -> None:
        table = self.query_one("#job-table", DataTable)
        # Job changes arrive up to ~10 times a second per job; the table is redrawn at most 4.
        self.refresh_on_jobs_change(self.refresh_jobs)
        self.refresh_jobs()
        self.call_after_refresh(self.place_toasts)
        table.focus()

    def on_screen_resume(self) -> None:
        self.refresh_jobs()

    def on_resize(self) -> None:
        self.refresh_jobs()  # what the table drops on a narrow terminal depends on the width
        self.call_after_refresh(self.place_toasts)

    def refresh_jobs(self) -> None:
        if not self.is_mounted:
            return
        table = self.query_one("#job-table", DataTable)
        selected = self.selected_id()
        views = self.app.job_list()
        rows = []
        for view in views:
            label, role = view.status_text()
            rows.append((view.id, {
                "status": Text(label, style=role_style(self.app, role)), "kind": view.kind_text(),
                "subject": view.subject, "progress": view.progress_text(), "rate": view.rate_text(),
                "eta": view.eta_text(), "duration": view.duration_text(), "phase": view.phase or "—",
                "origin": view.started_by or view.origin, "started": model.short_time(view.started_at),
            }))
        fill_table(table, JOB_COLUMNS, rows, self.size.width - 4)  # the box: border and padding
        if views:
            ids = [v.id for v in views]
            fresh = [v.id for v in views if v.running and v.id not in self._seen_running]
            if fresh and self._listed:
                selected = fresh[0]  # a job that just started running takes the selection, once
            self._listed = True
            self._seen_running.update(v.id for v in views if v.running)
            table.move_cursor(row=ids.index(selected) if selected in ids else 0)
        self.show_selected()

    def selected_id(self) -> str | None:
        return selected_key(self.query_one("#job-table", DataTable))

    def selected_view(self) -> model.JobView | None:
        job_id = self.selected_id()
        return self.app.job_views.get(job_id) if job_id else None

    @on(DataTable.RowHighlighted, "#job-table")
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_selected()
        self.refresh_bindings_if_changed("cancel_job")
        self.call_after_refresh(self.place_toasts)

    def place_toasts(self) -> None:
        """Toasts go over the job table's rows on the far side of the selected row, never over
        that row or the Selected job box (Textual puts them bottom right: on the box)."""
        table = self.query_one("#job-table", DataTable)
        area = table.region
        if not area.height or not self.size.height:
            return
        top = area.y + 1  # under the column headers
        row = top + table.cursor_row - round(table.scroll_y) if table.row_count else top - 1
        above, below = row - top, area.bottom - row - 1
        racks = self.query("#textual-toastrack")  # none when notifications are off (tests)
        if not racks:
            return
        rack = racks.first()
        if below >= above:
            rack.styles.dock, rack.styles.align_vertical = "bottom", "bottom"
            rack.styles.margin = (0, 0, self.size.height - area.bottom, 0)
        else:
            rack.styles.dock, rack.styles.align_vertical = "top", "top"
            rack.styles.margin = (top, 0, 0, 0)
        rack.styles.max_height = max(1, max(above, below))

    def show_selected(self) -> None:
        view = self.selected_view()
        facts = self.query_one("#job-facts", Static)
        bar = self.query_one("#job-progress", ProgressBar)
        if view is None:
            facts.update("No jobs yet. Press b to run a backup now." if not self.app.read_only else "No jobs yet.")
            bar.update(total=None, progress=0)
            self.query_one("#job-log", Static).update("")
            return
        label, role = view.status_text()
        done = model.size_text(view.bytes_done)
        total = f" of {model.size_text(view.bytes_total)}" if view.bytes_total else ""
        files = f"{view.files_done:,}" + (f" of {view.files_total:,}" if view.files_total else "")
        lines = [
            f"[${role}][b]{escape(label)}[/][/] {escape(view.kind_text())} of [b]{escape(view.subject)}[/] · run "
            f"{escape(view.id)} · {escape(view.origin)}"
            + (f" · started by {escape(view.started_by)}" if view.started_by else ""),
            f"Phase [b]{escape(view.phase or '—')}[/] · {done}{total} · {files} files · "
            f"{escape(view.rate_text())} · {escape(view.files_rate_text())} · ETA {escape(view.eta_text())}",
            f"Current: {escape(view.current or '—')}",
        ]
        if not view.running:
            lines.append(f"Done: [b]{escape(view.totals_text())}[/] in {escape(view.duration_text())}"
                         + (f" (started {model.short_time(view.started_at)}, finished "
                            f"{model.short_time(view.finished_at)} UTC)" if view.finished_at else ""))
        if view.status == "cancelled":  # an operator's choice, not an error
            lines.append(f"[$warning]■ cancelled by {escape(view.cancelled_by or 'an operator (unrecorded)')}[/]")
        elif view.error:
            lines.append(f"[$error]✗ {escape(view.error)}[/]")
        facts.update("\n".join(lines))
        fraction = view.fraction
        if fraction is None:  # unknown total: an empty bar, not an animation that costs CPU
            bar.update(total=100, progress=0 if view.running or view.status != "succeeded" else 100)
        else:
            bar.update(total=100, progress=round(fraction * 100, 1))
        self.show_log(view)

    def show_log(self, view: model.JobView) -> None:
        if view.id.startswith("console-"):
            self.query_one("#job-log", Static).update("(this job writes no run log; see the toast for its result)")
            return
        events = list(reversed(self.app.workspace.catalog.events(view.id, limit=30)))
        lines = []
        for event in events:
            at = model.parse_time(event["at"])
            mark = {"warning": "[$warning]▲[/]", "error": "[$error]✗[/]"}.get(event["level"], "·")
            lines.append(f"[dim]{at:%H:%M:%S}[/] {mark} {escape(event['message'])}" if at else escape(event["message"]))
        self.query_one("#job-log", Static).update("\n".join(lines) or "No events yet.")

    def can_run(self, action: str) -> bool | None:
        if action == "cancel_job":
            view = self.selected_view()
            return True if view is not None and view.running else None
        return True

    def action_cancel_job(self) -> None:
        view = self.selected_view()
        if view is None or not view.running:
            return
        body = (f"Cancel the {view.kind} of {view.subject} (run {view.id}, {view.origin})?\n\n"
                "The engine stops between units of work and records the run as cancelled; nothing "
                "half-written is left behind" + (" (restored files already in place stay)." if view.kind == "restore" else "."))
        self.app.push_screen(ConfirmDialog("Cancel this job?", body, yes_label="Cancel the job", no_label="Keep running"),
                             lambda yes: self.app.cancel_job(view) if yes else None)
