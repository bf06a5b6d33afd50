"""The dashboard: the first thing an operator sees. Policy health, running jobs, storage, events."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.markup import escape
from textual.widgets import DataTable, Header, Static

from insite_console import clock
from insite_console.tui import commands, model
from insite_console.tui.screens.base import InsiteScreen, selected_key
from insite_console.tui.widgets.fit import Col, fill_table
from insite_console.tui.widgets.footer import InsiteFooter
from insite_console.tui.widgets.styles import role_style

# what an operator needs at 60 columns comes first (priority 0); the rest is dropped whole
HEALTH_COLUMNS = [
    Col("status", "Health"), Col("policy", "Policy"), Col("last", "Last success (UTC)", 3),
    Col("age", "Age / RPO"), Col("next", "Next run (UTC)", 1), Col("failure", "Last failure", 2, max_width=60, min_width=16),
]
LEVELS = {"info": ("·", "foreground"), "warning": ("▲", "warning"), "error": ("✗", "error")}


class DashboardScreen(InsiteScreen):
    SCOPE = "dashboard"
    BINDINGS = commands.bindings("dashboard")

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        with Vertical(id="dashboard"):
            yield Static(id="banner")
            with Vertical(id="health-box", classes="box") as box:
                box.border_title = "Policy health"
                box.border_subtitle = "enter: backups · p: trends"
                yield DataTable(id="health", cursor_type="row", zebra_stripes=False)
            if self.app.workspace.config.recoveries:
                with VerticalScroll(id="recoverable-box", classes="box") as box:
                    box.border_title = "Platform recovery: newest point in time"
                    yield Static(id="recoverable")
            with Horizontal(id="middle"):
                with VerticalScroll(id="running-box", classes="box") as box:
                    box.border_title = "Running jobs"
                    yield Static(id="running")
                with VerticalScroll(id="storage-box", classes="box") as box:
                    box.border_title = "Storage"
                    yield Static(id="storage")
            with VerticalScroll(id="events-box", classes="box") as box:
                box.border_title = "Recent events"
                yield Static(id="events")
        yield InsiteFooter()

    def on_mount(self) -> None:
        table = self.query_one("#health", DataTable)
        self.watch(self.app, "catalog_version", lambda _: self.refresh_data() if self.is_active else None, init=False)
        self.refresh_on_jobs_change(self.refresh_running)
        self.watch(self.app, "theme", lambda _: self.refresh_data(), init=False)
        self.watch(self.app, "storage_version", lambda _: self.refresh_data() if self.is_active else None,
                   init=False)
        # ages, breaches, missed runs change with time alone: recompute with nobody at the keyboard
        self.set_interval(self.app.poll_seconds, self.refresh_live, name="dashboard-clock")
        self.refresh_data()
        table.focus()

    def refresh_live(self) -> None:
        if not self.is_active:
            return
        for part in (self._refresh_health, self.refresh_storage, self.refresh_running, self.refresh_recoverable):
            try:
                part()
            except Exception as exc:
                self.app.report_error("cannot refresh the dashboard", exc)

    def on_resize(self) -> None:
        self.refresh_data()  # what the health table drops on a narrow terminal depends on the width

    def on_screen_resume(self) -> None:
        self.refresh_data()

    def refresh_data(self) -> None:
        if not self.is_mounted:
            return
        try:
            self._refresh_health()
        except Exception as exc:  # a damaged catalog row must not take the console down
            self.app.report_error("cannot read policy health", exc)
        for part in (self.refresh_storage, self.refresh_events, self.refresh_running, self.refresh_banner,
                     self.refresh_recoverable):
            try:
                part()
            except Exception as exc:
                self.app.report_error("cannot refresh the dashboard", exc)

    def _refresh_health(self) -> None:
        ws = self.app.workspace
        now = clock.now()
        table = self.query_one("#health", DataTable)
        cursor = table.cursor_row
        rows = []
        self._scheduler = None
        # under 110 columns the Next run column shows ~16 characters: a missed run is "▲ missed
        # 02:30" there, and its reason goes under the scheduler line (Running jobs) instead
        narrow = self.size.width < 110
        self._missed_lines = []
        self._stream_lines = []  # a physical source's wal-stream: under the scheduler line
        for row in model.policy_health(ws, now):
            self._scheduler = row["scheduler"]
            if row.get("wal_stream"):
                stream = row["wal_stream"]
                mark = "[$success]▶[/]" if stream["running"] and not stream["last_error"] else "[$warning]▲[/]"
                self._stream_lines.append(f"{mark} {escape(row['policy'])}: {escape(stream['text'])}")
            label, role = model.status_label(row["shown"])
            if row["running"]:
                label += " ▶"
            failure = "—"
            if row["last_failure_at"]:
                failure = f"{model.age_text(model.parse_time(row['last_failure_at']), now)}: {row['last_failure_error'] or ''}"
            next_run = model.parse_time(row["next_run_at"])
            missed = row.get("missed_run")
            if missed:  # never let the next run move on silently past one that did not happen
                when = model.short_clock(missed["at"])
                upcoming = Text(f"▲ missed {when}" + ("" if narrow else f": {missed['reason']}"),
                                style=role_style(self.app, "warning"))
                if narrow:
                    self._missed_lines.append(f"{row['policy']} missed {when}: {missed['reason']}")
            else:
                upcoming = f"{next_run:%Y-%m-%d %H:%M}" if next_run else "not scheduled"
            rows.append((row["policy"], {
                "status": Text(label, style=role_style(self.app, role)), "policy": row["policy"],
                "last": model.short_time(row["last_success_at"]), "age": row["age_vs_rpo"], "next": upcoming,
                "failure": Text(failure, style=role_style(self.app, "error") if row["failing"] else ""),
            }))
        fill_table(table, HEALTH_COLUMNS, rows, self.size.width - 4)  # the box: border and padding
        if table.row_count:
            table.move_cursor(row=min(max(cursor, 0), table.row_count - 1))

    def refresh_running(self) -> None:
        if not self.is_mounted:
            return
        running = [v for v in self.app.job_list() if v.running]
        scheduler = getattr(self, "_scheduler", None)
        lines = []
        if scheduler is not None:
            mark = {True: "[$success]▶[/]", False: "[$error]✗[/]"}.get(scheduler["running"], "[$warning]▲[/]")
            lines.append(f"{mark} Scheduler: {escape(scheduler['text'])}")
        lines += getattr(self, "_stream_lines", [])
        lines += [f"[$warning]▲[/] {escape(line)}" for line in getattr(self, "_missed_lines", [])]
        if not running:
            lines.append("No job is running.  [dim](b: back up now)[/]" if not self.app.read_only
                         else "No job is running.")
        else:
            for view in running[:6]:
                lines.append(f"[$primary]▶[/] {escape(view.kind)} [b]{escape(view.subject)}[/] "
                             f"{escape(view.progress_text())} {escape(view.phase)} · {escape(view.rate_text())}"
                             f" · ETA {escape(view.eta_text())}")
        self.query_one("#running", Static).update("\n".join(lines))

    def refresh_recoverable(self) -> None:
        if self.app.workspace.config.recoveries:
            from insite_console.tui.screens.platform import recoverable_lines

            self.query_one("#recoverable", Static).update("\n".join(recoverable_lines(self.app.workspace)))

    def refresh_banner(self) -> None:
        lines = self.app.banner_lines()
        banner = self.query_one("#banner", Static)
        banner.display = bool(lines)
        banner.update("\n".join(f"✗ {escape(line)}" for line in lines))

    def refresh_storage(self) -> None:
        lines = []
        probes = self.app.storage_probes
        for entry in model.storage_usage(self.app.workspace):
            free = f" · {model.size_text(entry['free'])} free" if entry.get("free") is not None else ""
            state = (probes.get(entry["name"]) or {}).get("state")
            mark = {"missing": " [$error]✗ MISSING[/]", "unreadable": " [$error]✗ UNREADABLE[/]"}.get(state, "")
            known = "expected (catalog)" if mark else "stored"
            lines.append(f"[b]{escape(entry['name'])}[/] ({escape(entry['type'])}){mark}: {entry.get('backups', 0)} "
                         f"backups, {model.size_text(entry.get('bytes_stored'))} {known}{free}")
        self.query_one("#storage", Static).update("\n".join(lines) or "No storage configured.")

    def refresh_events(self) -> None:
        lines = []
        for event in self.app.workspace.catalog.events(limit=40):
            symbol, role = LEVELS.get(event["level"], ("·", "foreground"))
            at = model.parse_time(event["at"])
            stamp = f"{at:%m-%d %H:%M:%S}" if at else "?"
            lines.append(f"[dim]{stamp}[/] [${role}]{symbol} {escape(event['level']):<7}[/] {escape(event['message'])}")
        self.query_one("#events", Static).update("\n".join(lines) or "No events yet.")

    def selected_policy(self) -> str | None:
        return selected_key(self.query_one("#health", DataTable))

    def action_open_policy(self) -> None:
        self.app.open_catalog(self.selected_policy())

    def action_open_trends(self) -> None:
        from insite_console.tui.screens.policy import PolicyScreen

        policy = self.selected_policy()
        if policy:
            self.app.push_screen(PolicyScreen(policy))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.app.open_catalog(event.row_key.value)

    def action_back(self) -> None:
        pass  # the dashboard is home
