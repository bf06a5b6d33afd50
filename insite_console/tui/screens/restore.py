"""The restore wizard: what → which parts → where → plan → confirm → progress → result.

Nothing is written before the confirmation step: the plan is the engine's dry run
(`restore.run(..., dry_run=True)`), which reads the repository and the target only. Going
back and forth keeps every choice. When the plan overwrites anything, the operator must type
the target to go on.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.markup import escape
from textual.widgets import (Button, ContentSwitcher, DataTable, Header, Input, Label, OptionList,
                             ProgressBar, RadioButton, RadioSet, Select, Static)
from textual.widgets.option_list import Option

from insite_console import clock
from insite_console import restore as restore_engine
from insite_console.tui import commands, model
from insite_console.tui.messages import PlanReady, TreeLoaded
from insite_console.tui.screens.base import InsiteScreen
from insite_console.tui.widgets.backup_detail import model_error
from insite_console.tui.widgets.fit import fit
from insite_console.tui.widgets.footer import InsiteFooter
from insite_console.tui.widgets.stored_tree import StoredTree

STEPS = ("What", "Parts", "Where", "Plan", "Confirm", "Progress", "Result")
WHAT, PARTS, WHERE, PLAN, CONFIRM, PROGRESS, RESULT = range(len(STEPS))
WHERE_LABELS = {
    "where-beside": "Beside production: a new location (nothing existing is touched)",
    "where-original": "Original location: over production",
    "where-custom": "Another place (type it below)",
}


def nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def validate_target(source_type: str, target: str) -> str | None:
    """Why the target cannot be used, or None."""
    if not target.strip():
        return "the target is empty"
    if source_type != "files":
        return None  # a DSN or URL: the engine's pre-flight checks it
    path = Path(target)
    if not path.is_absolute():
        return "the target must be an absolute path"
    if path.exists() and not path.is_dir():
        return f"{target} exists and is not a directory"
    base = nearest_existing(path)
    if not os.access(base, os.W_OK):
        return f"{base} is not writable by this user"
    return None


class RestoreWizard(InsiteScreen):
    SCOPE = "restore"
    BINDINGS = commands.bindings("restore")

    def __init__(self) -> None:
        super().__init__()
        self.step = WHAT
        self.backup: dict | None = None
        self.plan: dict | None = None
        self.plan_failed = False
        self.job_key: str | None = None
        self.after_check: str | None = None
        self._tree_for: str | None = None
        self._ready = False
        self._pending_preset: str | None = None
        self.at = None  # a point in time: picks the restore point; replayed to for physical PostgreSQL
        self._at_text = ""  # the time as typed, once applied
        self._points: dict[str, dict] = {}  # the source's restore points listed, newest first

    # ----- layout ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        yield Static(id="steps")
        with ContentSwitcher(initial="step-what", id="wizard"):
            with VerticalScroll(id="step-what", classes="step"):
                yield Label("[b]1. What to restore[/]: a source, then a restore point", markup=True)
                yield Select([("One backup (as below)", "backup")], id="restore-kind", allow_blank=False,
                             compact=True)
                yield Select([], prompt="source", id="source", allow_blank=True, compact=True)
                yield Static(id="window")
                yield OptionList(id="points")
                yield Input(placeholder=self.at_placeholder(), id="at", compact=True)
            with Vertical(id="step-parts", classes="step"):
                yield Label("[b]2. Which parts[/]: nothing selected restores everything", markup=True)
                yield Static(id="parts-help")
                yield StoredTree(selectable=True, id="parts-tree")
                yield Input(placeholder="more patterns, comma separated: /opt/app/config/**, *.conf, public.orders",
                            id="patterns", compact=True)
                yield Static(id="parts-summary")
            with VerticalScroll(id="step-where", classes="step"):
                yield Label("[b]3. Where to[/]: beside production is the default; over it is an explicit choice",
                            markup=True)
                with RadioSet(id="where"):
                    for button_id, label in WHERE_LABELS.items():
                        yield RadioButton(label, value=button_id == "where-beside", id=button_id)
                yield Input(id="target", compact=True)
                yield Static(id="target-check")
            with Vertical(id="step-plan", classes="step"):
                yield Static("[b]4. The plan[/] (a dry run: nothing is written)", id="plan-title")
                yield Static(id="plan-summary")
                yield DataTable(id="plan-table", cursor_type="row")
            with VerticalScroll(id="step-confirm", classes="step"):
                yield Static(id="confirm-text")
                yield Input(id="confirm-input", compact=True)
                yield Input(id="reason-input", compact=True,
                            placeholder="reason or ticket id (recorded with the restore): INC-123 …")
                yield Static(id="confirm-error")
            with Vertical(id="step-progress", classes="step"):
                yield Static(id="progress-facts")
                yield ProgressBar(id="restore-progress", total=100, show_eta=False)
            with VerticalScroll(id="step-result", classes="step"):
                yield Static(id="result-text")
        with Horizontal(id="wizard-nav"):
            yield Button("◀ Back", id="back", compact=True)
            yield Button("Next ▶", id="next", variant="primary", compact=True)
        yield InsiteFooter()

    def on_mount(self) -> None:
        ws = self.app.workspace
        sources = sorted(ws.config.sources)
        select = self.query_one("#source", Select)
        select.set_options([(f"{name} ({ws.config.sources[name]['type']})", name) for name in sources])
        if sources:
            select.value = sources[0]
        # the first choice, when the config has recovery plans: one backup, or the platform
        kind = self.query_one("#restore-kind", Select)
        kind.set_options([("One backup (as below)", "backup")]
                         + [(f"The platform: recovery plan {name}", name) for name in sorted(ws.config.recoveries)])
        kind.display = bool(ws.config.recoveries)
        plan_table = self.query_one("#plan-table", DataTable)
        for key, title in (("action", "Action"), ("type", "Type"), ("path", "Path"), ("bytes", "Size")):
            plan_table.add_column(title, key=key)
        self.query_one("#confirm-input", Input).display = False
        self.query_one("#reason-input", Input).display = False
        self.watch(self.app, "jobs_version", lambda _: self.job_changed(), init=False)
        # a backup that finished since the list was read (in the console, by cron): listed
        self.watch(self.app, "catalog_version", lambda _: self.refresh_points(), init=False)
        self._ready = True
        self.show_step(WHAT)
        if self._pending_preset:
            self.preset(self._pending_preset)

    # ----- navigation -------------------------------------------------------------------------

    def show_step_bar(self) -> None:
        """Every step named; where they do not fit on one line (under ~80 columns) only the
        current step keeps its name and the others their number (never a name cut or wrapped)."""
        full = len(" › ".join(f"{i + 1} {name}" for i, name in enumerate(STEPS))) + 2  # the current: reversed, padded
        short = full > self.size.width - 2  # #steps: padding 0 1
        marks = []
        for i, name in enumerate(STEPS):
            if i == self.step:
                marks.append(f"[b reverse] {i + 1} {name} [/]")
            elif i < self.step:
                marks.append("[$success]✓[/]" + ("" if short else f" {name}"))
            else:
                marks.append(f"[dim]{i + 1}{'' if short else ' ' + name}[/]")
        self.query_one("#steps", Static).update(" › ".join(marks))

    def at_placeholder(self) -> str:
        """The time field's hint, shortened to what fits (a placeholder is cut, not wrapped)."""
        zone = clock.zone_name(clock.local_zone())
        for text in (f"or a time (zone {zone} unless typed): -2h, 14:05, yesterday 14:00, 2026-11-27T02:00Z · "
                     "picks the newest point before it",
                     f"or a time (zone {zone} unless typed): -2h, 14:05, yesterday 14:00, 2026-11-27T02:00Z",
                     f"or a time ({zone}): -2h, 14:05, yesterday 14:00, 2026-11-27T02:00Z",
                     "or a time: -2h, 14:05, yesterday 14:00, ISO"):
            if len(text) <= (self.size.width or 120) - 2:
                break
        return text

    def on_resize(self) -> None:
        if not self._ready:
            return
        self.show_step_bar()
        self.query_one("#at", Input).placeholder = self.at_placeholder()
        source = self.query_one("#source", Select).value
        if self.step == WHAT and isinstance(source, str):  # the restore points' lines are fitted to the width
            options = self.query_one("#points", OptionList)
            index = options.highlighted
            keep = options.get_option_at_index(index).id if index is not None else None
            self.fill_points(source, select_id=keep)

    def show_step(self, step: int) -> None:
        self.step = step
        names = ["what", "parts", "where", "plan", "confirm", "progress", "result"]
        self.query_one("#wizard", ContentSwitcher).current = f"step-{names[step]}"
        self.show_step_bar()
        back, nxt = self.query_one("#back", Button), self.query_one("#next", Button)
        back.label = {PROGRESS: "■ Cancel restore", RESULT: "◀ New restore"}.get(step, "◀ Back")
        nxt.display = step not in (PROGRESS, RESULT)
        nxt.label = "Restore ▶" if step == CONFIRM else "Next ▶"
        nxt.variant = "error" if step == CONFIRM and (self.overwrites or self.repairs) else "primary"
        nxt.disabled = step == PLAN and (self.plan is None or self.plan_failed)
        if step == WHAT:  # each step starts on its first field
            kind = self.query_one("#restore-kind", Select)
            (kind if kind.display else self.query_one("#source", Select)).focus()
        elif step == PARTS:
            self.enter_parts()
        elif step == WHERE:
            self.enter_where()
        elif step == PLAN:
            self.enter_plan()
        elif step == CONFIRM:
            self.enter_confirm()
        self.refresh_bindings()

    @on(Button.Pressed, "#next")
    def next_pressed(self) -> None:
        self.action_next()

    @on(Button.Pressed, "#back")
    def back_pressed(self) -> None:
        if self.step == RESULT:
            self.reset()
        elif self.step == PROGRESS:
            self.ask_cancel()
        else:
            self.action_back()

    def ask_cancel(self) -> None:
        self.app.ask_cancel_console_job(self.job_key, "restore", "Files already restored stay (each one whole); "
                                        "the target is left partly restored. Running the restore again fetches "
                                        "only what is missing.", "Keep restoring")

    def action_next(self) -> None:
        if self.step == WHAT:
            if not self.apply_at():
                self.query_one("#at", Input).focus()
                return
            if self.at is not None and self.backup is not None and restore_engine.taken_at(self.backup) > self.at:
                self.query_one("#window", Static).update(
                    f"[$error]✗ restore point {escape(self.backup['id'])} was taken after the time you asked "
                    f"({clock.iso(self.at)}): choose an earlier one, or clear the time[/]")
                return
            if self.backup is None:
                self.notify("choose a restore point first", severity="warning")
                return
            self.show_step(PARTS)
        elif self.step == PARTS:
            self.show_step(WHERE)
        elif self.step == WHERE:
            problem = validate_target(self.source_type, self.target)
            if problem:
                self.query_one("#target-check", Static).update(f"[$error]✗ {escape(problem)}[/]")
                return
            self.show_step(PLAN)
        elif self.step == PLAN:
            if self.plan is not None and not self.plan_failed:
                self.show_step(CONFIRM)
        elif self.step == CONFIRM:
            self.confirm()

    def action_back(self) -> None:
        if self.step in (WHAT, PROGRESS, RESULT):
            self.app.switch_mode("dashboard")
        else:
            self.show_step(self.step - 1)

    def can_run(self, action: str) -> bool | None:
        if action == "next":
            return True if self.step < PROGRESS else None
        return True

    def reset(self) -> None:
        self.job_key = None
        self.after_check = None
        self.safe_defaults()
        self.show_step(WHAT)

    def safe_defaults(self) -> None:
        """A new restore starts beside production, with no time, parts or confirmation left
        over from the previous one ("over production" is never carried over)."""
        self.plan = None
        self.at = None
        self._at_text = ""
        self.query_one("#at", Input).value = ""
        self.query_one("#patterns", Input).value = ""
        self.query_one("#confirm-input", Input).value = ""
        self.query_one("#reason-input", Input).value = ""
        self.query_one("#parts-tree", StoredTree).selected_paths.clear()
        self._tree_for = None
        self.query_one("#where-beside", RadioButton).value = True
        if self.backup is not None:
            self.query_one("#target", Input).value = self.default_target(self.backup, "beside")

    # ----- 1. what --------------------------------------------------------------------------

    @property
    def source_type(self) -> str:
        source = self.query_one("#source", Select).value
        settings = self.app.workspace.config.sources.get(source) if isinstance(source, str) else None
        return settings["type"] if settings else (self.backup or {}).get("source_type", "files")

    def preset(self, backup_id: str) -> None:
        if not self._ready:  # called right after switch_mode: applied on mount
            self._pending_preset = backup_id
            return
        backup = self.app.workspace.catalog.backup(backup_id)
        if backup is None or backup["status"] != "succeeded":
            self.notify(f"backup {backup_id} is not a restore point", severity="error")
            return
        if self.step >= PROGRESS and self.job_key and self.app.console_jobs[self.job_key].status == "running":
            self.notify("a restore is in progress in the wizard; wait for it to finish", severity="warning")
            return
        self.job_key = None
        self.safe_defaults()
        select = self.query_one("#source", Select)
        if select.value != backup["source"]:
            select.value = backup["source"]
        self.fill_points(backup["source"], select_id=backup["id"])
        self.choose(backup)
        self.show_step(WHAT)

    @on(Select.Changed, "#restore-kind")
    def kind_changed(self, event: Select.Changed) -> None:
        if not isinstance(event.value, str) or event.value == "backup":
            return
        from insite_console.tui.screens.platform import PlatformRecoveryScreen

        def back(_record) -> None:
            self.query_one("#restore-kind", Select).value = "backup"

        self.app.push_screen(PlatformRecoveryScreen(str(event.value)), back)

    @on(Select.Changed, "#source")
    def source_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            keep = self.backup["id"] if self.backup and self.backup["source"] == event.value else None
            self.fill_points(event.value, select_id=keep)

    def show_window(self) -> None:
        """The source's restorable window (also what replaces a time's error once the field is cleared)."""
        points = list(self._points.values())  # newest first, as listed
        window = self.query_one("#window", Static)
        if points:
            window.update(f"Restorable window: [b]{model.short_time(points[-1]['started_at'])}[/] … "
                          f"[b]{model.short_time(points[0]['started_at'])}[/] UTC · {len(points)} restore point(s)"
                          + (" (newest 500 listed)" if len(points) == 500 else ""))
        else:
            window.update("[$warning]▲ no successful backup of this source: nothing to restore[/]")

    def read_points(self, source: str) -> list[dict]:
        """The source's restore points in the catalog, newest first (the newest 500)."""
        return self.app.workspace.catalog.backups(source=source, status="succeeded", limit=500)

    def fill_points(self, source: str, select_id: str | None = None, points: list[dict] | None = None) -> None:
        if points is None:
            points = self.read_points(source)
        self._points = {b["id"]: b for b in points}
        options = self.query_one("#points", OptionList)
        options.clear_options()
        width = self.size.width - 6  # the wizard's padding, the list's border and scrollbar
        for backup in points:
            kind = {"incremental": "incr", "differential": "diff"}.get(backup["type"], backup["type"])
            # one line each: a narrow terminal drops the policy (the source says it), then the file count
            parts = [f"{restore_engine.taken_at(backup):%Y-%m-%d %H:%M:%S}", f"{kind:<4}", backup["id"][:8],
                     f"{backup['files']:>6,} files", f"{model.size_text(backup['bytes_read']):>10}", backup["policy"]]
            kept = fit(parts, [len(p) for p in parts], [0, 0, 0, 2, 1, 3], width, gap=2)
            options.add_option(Option("  ".join(kept), id=backup["id"]))
        self.show_window()
        if points:
            chosen = select_id if select_id in self._points else points[0]["id"]
            options.highlighted = options.get_option_index(chosen)
            self.choose(self._points[chosen])
        else:
            self.backup = None

    def refresh_points(self) -> None:
        """Re-read the restore points when the catalog has others than those listed, keeping
        the one chosen, and apply the time typed again over the list as it is now."""
        if self.reload_points() and self._at_text:
            self._at_text = ""
            self.apply_at()

    def reload_points(self) -> bool:
        """List the catalog's restore points again if they changed (a backup finished in the
        console or by cron): a stale list would pick an older point for a time typed."""
        source = self.query_one("#source", Select).value
        if self.step != WHAT or not isinstance(source, str):
            return False
        points = self.read_points(source)
        if [b["id"] for b in points] == list(self._points):
            return False
        keep = self.backup["id"] if self.backup and self.backup["source"] == source else None
        self.fill_points(source, select_id=keep, points=points)
        return True

    def on_screen_resume(self) -> None:
        self.refresh_points()

    @on(OptionList.OptionHighlighted, "#points")
    def point_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        backup = self._points.get(event.option.id)
        if backup is not None:
            self.choose(backup)

    @on(OptionList.OptionSelected, "#points")
    def point_selected(self, event: OptionList.OptionSelected) -> None:
        self.point_highlighted(event)
        self.action_next()

    @on(Input.Submitted, "#at")
    @on(Input.Blurred, "#at")
    def at_left(self) -> None:
        self.apply_at()

    def apply_at(self) -> bool:
        """Apply the typed point in time (whatever leaves the field: enter, tab, ctrl+n, a click):
        pick the newest restore point taken at or before it. False when it cannot be applied."""
        text = self.query_one("#at", Input).value.strip()
        if text == self._at_text:
            return self.at is not None or not text
        self._at_text = text
        self.reload_points()  # the newest point taken before the time, not the newest when the list was read
        self.at = None
        self.plan = None
        if not text:
            self.show_window()
            return True
        try:
            at = clock.parse_when(text, clock.now(), clock.local_zone())
        except ValueError as exc:
            self.query_one("#window", Static).update(f"[$error]✗ point in time: {escape(str(exc))}[/]")
            return False
        candidates = [b for b in self._points.values() if restore_engine.taken_at(b) <= at]
        if not candidates:
            self.query_one("#window", Static).update(
                f"[$error]✗ no restore point of this source was taken at or before {clock.iso(at)}[/]")
            return False
        best = max(candidates, key=restore_engine.taken_at)
        options = self.query_one("#points", OptionList)
        options.highlighted = options.get_option_index(best["id"])
        self.choose(best)
        self.at = at
        replay = " and WAL replayed to it" if self.replays_wal else ""
        self.query_one("#window", Static).update(f"{self.asked_text(best)}{replay}")
        return True

    def asked_text(self, backup: dict) -> str:
        """'you asked for T; restore point X taken at T' (Δ before T)', so a mismatch shows."""
        taken = restore_engine.taken_at(backup)
        text = f"restore point [b]{escape(backup['id'])}[/] taken at [b]{taken:%Y-%m-%d %H:%M:%S}[/] UTC"
        if self.at is None:
            return text[0].upper() + text[1:] + " (the one chosen in the list)"
        delta = (self.at - taken).total_seconds()
        when = f"{clock.human_duration(delta)} before it" if delta > 0 else "exactly then"
        zone = clock.local_zone()
        local = self.at.astimezone(zone)
        shown = f" ({local:%H:%M:%S} {clock.zone_name(zone)})" if local.utcoffset() else ""
        return f"You asked for [b]{self.at:%Y-%m-%d %H:%M:%S}[/] UTC{shown}; {text} ({when})"

    @property
    def replays_wal(self) -> bool:
        """Only a physical PostgreSQL backup can be replayed to a time (base backup + WAL)."""
        source = self.query_one("#source", Select).value
        settings = self.app.workspace.config.sources.get(source) if isinstance(source, str) else None
        return bool(settings and settings["type"] == "postgresql" and settings.get("mode") == "physical")

    @property
    def replay_at(self):
        return self.at if self.replays_wal else None

    @property
    def engine_at(self):
        """The time asked, for the engine to refuse a newer restore point (and, for physical
        PostgreSQL, to replay to); a logical dump cannot take one."""
        logical_pg = self.source_type == "postgresql" and not self.replays_wal
        return None if logical_pg else self.at

    def choose(self, backup: dict) -> None:
        if self.backup is None or self.backup["id"] != backup["id"]:
            self.plan = None
            target = self.query_one("#target", Input)
            if not target.value or self.query_one("#where-beside", RadioButton).value:
                target.value = self.default_target(backup, "beside")
        self.backup = backup

    # ----- 2. parts -------------------------------------------------------------------------

    def enter_parts(self) -> None:
        help_text = {
            "files": "space: select a file or folder in the stored tree · or type glob patterns below",
            "postgresql": "type tables as schema.table (logical backups); empty restores the whole database",
            "redis": "type key patterns such as session:*; empty restores every key",
        }.get(self.source_type, "")
        self.query_one("#parts-help", Static).update(help_text)
        tree = self.query_one("#parts-tree", StoredTree)
        tree.display = self.source_type == "files"
        if self.source_type == "files" and self.backup and self._tree_for != self.backup["id"]:
            self._tree_for = self.backup["id"]
            tree.selected_paths.clear()
            tree.clear()
            tree.root.add_leaf("reading the stored tree…")
            self.load_tree(self.backup)
        self.update_parts_summary()
        (tree if tree.display else self.query_one("#patterns", Input)).focus()

    @work(thread=True, exclusive=True, group="wizard-tree", exit_on_error=False)
    def load_tree(self, backup: dict) -> None:
        try:
            entries, truncated = self.app.read_tree(backup, limit=50_000)
            self.post_message(TreeLoaded(backup["id"], entries, truncated))
        except Exception as exc:
            self.post_message(TreeLoaded(backup["id"], [], False, model_error(exc)))

    @on(TreeLoaded)
    def tree_loaded(self, message: TreeLoaded) -> None:
        if self.backup is None or message.backup_id != self.backup["id"]:
            return
        tree = self.query_one("#parts-tree", StoredTree)
        if message.error:
            tree.clear()
            tree.root.add_leaf(f"✗ cannot read the stored tree: {message.error}")
            return
        tree.load(message.entries, message.truncated)

    @on(StoredTree.SelectionChanged)
    @on(Input.Changed, "#patterns")
    def parts_changed(self) -> None:
        self.plan = None
        self.update_parts_summary()

    @property
    def includes(self) -> list[str]:
        patterns = list(self.query_one("#parts-tree", StoredTree).includes()) if self.source_type == "files" else []
        typed = self.query_one("#patterns", Input).value
        patterns += [p.strip() for p in typed.split(",") if p.strip()]
        return patterns

    def update_parts_summary(self) -> None:
        includes = self.includes
        text = "Will restore: [b]everything in the backup[/]" if not includes else (
            "Will restore only: " + ", ".join(f"[b]{escape(p)}[/]" for p in includes))
        self.query_one("#parts-summary", Static).update(text)

    # ----- 3. where -------------------------------------------------------------------------

    def default_target(self, backup: dict, mode: str) -> str:
        ws = self.app.workspace
        settings = ws.config.sources.get(backup["source"], {})
        kind = settings.get("type", backup.get("source_type", "files"))
        if mode == "original":
            if kind == "files":
                return "/"
            return settings.get("dsn") or settings.get("url") or ""
        if kind == "files":
            return str(ws.config.base_dir / "restores" / backup["id"])
        if kind == "redis":
            return str(ws.config.base_dir / "restores" / backup["id"])
        return ""

    def enter_where(self) -> None:
        self.where_changed()
        self.query_one("#where", RadioSet).focus()

    @on(RadioSet.Changed, "#where")
    def where_changed(self, event: RadioSet.Changed | None = None) -> None:
        if self.backup is None:
            return
        for button in self.query_one("#where", RadioSet).query(RadioButton):
            # the choice as a word and a mark, not only as the radio's colour
            button.label = ("» " if button.value else "  ") + WHERE_LABELS[button.id] + (
                "  (chosen)" if button.value else "")
        target = self.query_one("#target", Input)
        mode = self.where_mode
        if mode == "beside":
            target.value = self.default_target(self.backup, "beside")
        elif mode == "original":
            target.value = self.default_target(self.backup, "original")
        target.disabled = mode != "custom"
        if mode == "custom" and event is not None:
            target.focus()  # the path is what comes next: typed there, not taken as keys of the screen
        self.check_target()

    @property
    def where_mode(self) -> str:
        pressed = self.query_one("#where", RadioSet).pressed_button
        return {"where-original": "original", "where-custom": "custom"}.get(pressed.id if pressed else "", "beside")

    @property
    def target(self) -> str:
        return self.query_one("#target", Input).value.strip()

    @on(Input.Changed, "#target")
    def check_target(self) -> None:
        self.plan = None
        problem = validate_target(self.source_type, self.target)
        note = self.query_one("#target-check", Static)
        if problem:
            note.update(f"[$error]✗ {escape(problem)}[/]")
        elif self.where_mode == "original":
            note.update("[$warning]▲ over production: existing data that differs from the backup will be "
                        "overwritten (the plan shows what, and asks you to type the target)[/]")
        else:
            note.update("[$success]✓[/] target looks usable; the plan checks it in detail")

    # ----- 4. plan ----------------------------------------------------------------------------

    def enter_plan(self) -> None:
        self.plan = None
        self.plan_failed = False
        self.query_one("#plan-summary", Static).update("Planning (dry run: reading the repository and the target)…")
        self.query_one("#plan-table", DataTable).clear()
        self.query_one("#plan-table", DataTable).focus()
        self.query_one("#next", Button).disabled = True
        self._plan_token = (self.backup["id"], self.target, tuple(self.includes), self.engine_at)
        self.run_plan(self.backup, self.target, self.includes, self.engine_at, self.source_type)

    @work(thread=True, exclusive=True, group="wizard-plan", exit_on_error=False)
    def run_plan(self, backup: dict, target: str, includes: list[str], at, source_type: str) -> None:
        # a thread: everything it needs comes in as arguments; it never reads a widget
        from insite_console import restore

        try:
            plan = restore.run(self.app.workspace, backup["id"], target, includes=includes, dry_run=True, at=at)
        except Exception as exc:
            self.post_message(PlanReady(None, model_error(exc), token=(backup["id"], target, tuple(includes), at)))
            return
        self.post_message(PlanReady(plan, checks=preflight(backup, target, plan, source_type),
                                    token=(backup["id"], target, tuple(includes), at)))

    @on(PlanReady)
    def plan_ready(self, message: PlanReady) -> None:
        if self.step != PLAN or message.token != getattr(self, "_plan_token", None):
            return  # a plan for choices since changed
        summary_view = self.query_one("#plan-summary", Static)
        if message.plan is None:
            self.plan_failed = True
            summary_view.update(f"[$error]✗ the plan failed:[/] {escape(message.error or '')}\n"
                                "Go back to change the target or the parts.")
            return
        self.plan = message.plan
        self.plan_failed = any(ok is False for ok, _ in message.checks)
        summary = message.plan.get("summary", {})
        lines = [
            self.asked_text(self.backup),
            f"Create [b]{summary.get('to_create', 0):,}[/] · overwrite [b]{summary.get('to_overwrite', 0):,}[/] · "
            + (f"repair metadata [b]{summary['to_repair']:,}[/] · " if summary.get("to_repair") else "")
            + f"already identical {summary.get('identical', 0):,} · {model.size_text(summary.get('bytes_to_write', 0))}"
            f" to write · about {clock.human_duration(summary.get('estimated_seconds', 0))} "
            f"({escape(summary.get('estimate_basis', ''))})",
        ]
        for ok, text in message.checks:
            mark = "[$success]✓[/]" if ok else ("[$error]✗[/]" if ok is False else "[$warning]▲[/]")
            lines.append(f"{mark} {escape(text)}")
        for note in message.plan.get("notes", []):
            lines.append(f"· {escape(str(note))}")
        summary_view.update("\n".join(lines))
        table = self.query_one("#plan-table", DataTable)
        table.clear()
        shown = 0
        for item in message.plan.get("plan", []):
            if item["type"] == "dir" and item["action"] == "skip":
                continue
            mark = {"create": "+ create", "overwrite": "! overwrite", "repair": "~ metadata",
                    "skip": "= identical"}.get(item["action"],
                                                                                                  item["action"])
            table.add_row(mark, item["type"], item["path"], model.size_text(item.get("bytes")))
            shown += 1
            if shown >= 500:
                break
        if message.plan.get("plan_truncated"):
            table.add_row("…", "", "(plan truncated; the totals above count everything)", "")
        self.query_one("#next", Button).disabled = self.plan_failed

    @property
    def overwrites(self) -> int:
        return int(((self.plan or {}).get("summary") or {}).get("to_overwrite", 0))

    @property
    def repairs(self) -> int:
        """Identical items whose mode, owner, times or attributes the restore puts back."""
        return int(((self.plan or {}).get("summary") or {}).get("to_repair", 0))

    # ----- 5. confirm -------------------------------------------------------------------------

    def enter_confirm(self) -> None:
        backup, target = self.backup, self.target
        summary = (self.plan or {}).get("summary", {})
        lines = [
            "[b]5. Confirm[/]",
            *([self.asked_text(backup)] if self.at is not None else []),
            f"Restore backup [b]{escape(backup['id'])}[/] ({escape(backup['policy'])}, "
            f"{model.short_time(backup['started_at'])} UTC)",
            f"into [b]{escape(target)}[/]"
            + (f", only {escape(', '.join(self.includes))}" if self.includes else ", everything")
            + (f", replaying WAL to [b]{clock.iso(self.replay_at)}[/]" if self.replay_at else ""),
            f"{summary.get('to_create', 0):,} to create, {self.overwrites:,} to overwrite, "
            f"{model.size_text(summary.get('bytes_to_write', 0))} to write.",
        ]
        field = self.query_one("#confirm-input", Input)
        if self.overwrites or self.repairs:
            changed = " and ".join(text for count, text in (
                (self.overwrites, f"{self.overwrites:,} existing item(s) will be overwritten"),
                (self.repairs, f"{self.repairs:,} identical item(s) get their mode, owner, times or attributes "
                               "put back")) if count)
            lines.append(f"\n[$error][b]✗ {changed}.[/][/] Type the target exactly to confirm:")
            lines.append(f"  [b]{escape(target)}[/]")
            field.display = True
            field.placeholder = target
            field.focus()
        else:
            lines.append("\n[$success]✓ nothing existing is overwritten.[/] Press Restore to start.")
            field.display = False
            self.query_one("#next", Button).focus()
        reason = self.query_one("#reason-input", Input)
        reason.display = self.over_source
        if self.over_source:
            lines.append("[$warning]▲ this is over production:[/] give a reason or ticket id below "
                         "(recorded with the restore, in the history: key 6).")
            if not (self.overwrites or self.repairs):
                reason.focus()
        self.query_one("#confirm-error", Static).update("")
        self.query_one("#confirm-text", Static).update("\n".join(lines))

    @property
    def over_source(self) -> bool:
        return bool((self.plan or {}).get("over_source"))

    @property
    def reason(self) -> str | None:
        return self.query_one("#reason-input", Input).value.strip() or None

    @on(Input.Submitted, "#confirm-input")
    @on(Input.Submitted, "#reason-input")
    def confirm_submitted(self) -> None:
        self.confirm()

    def confirm(self) -> None:
        if self.plan is None:
            self.show_step(PLAN)
            return
        if (self.overwrites or self.repairs) and self.query_one("#confirm-input", Input).value.strip() != self.target:
            self.query_one("#confirm-error", Static).update(
                "[$error]✗ that is not the target: nothing was written. Type it exactly, or go back.[/]")
            return
        if self.over_source and self.reason is None:
            self.query_one("#confirm-error", Static).update(
                "[$error]✗ a restore over production needs a reason or ticket id: nothing was written.[/]")
            self.query_one("#reason-input", Input).focus()
            return
        job = self.app.start_restore(self.backup["id"], self.target, self.includes, overwrite=bool(self.overwrites or self.repairs),
                                     at=self.engine_at, reason=self.reason if self.over_source else None)
        if job is None:
            return
        self.job_key = job.key
        self.after_check = None
        self.show_step(PROGRESS)
        self.job_changed()

    # ----- 6. progress, 7. result -------------------------------------------------------------

    def job_changed(self) -> None:
        if self.job_key is None or self.step not in (PROGRESS, RESULT):
            return
        job = self.app.console_jobs.get(self.job_key)
        if job is None:
            return
        view = self.app.job_views.get(job.run_id or job.key)
        if job.status == "running":
            facts = [f"[b]6. Restoring[/] {escape(job.subject)} into [b]{escape(self.target)}[/]"
                     + (" (a detached process: it continues if the console closes)" if job.detached else "")]
            bar = self.query_one("#restore-progress", ProgressBar)
            if self.replay_at is not None:
                facts.append(f"Target time [b]{clock.iso(self.replay_at)}[/]; replayed so far: "
                             f"{escape(view.current or '—') if view else '—'}")
            if view is not None:
                facts.append(f"Phase {escape(view.phase or '—')} · {model.size_text(view.bytes_done)}"
                             + (f" of {model.size_text(view.bytes_total)}" if view.bytes_total else "")
                             + f" · {view.files_done:,} files · {escape(view.rate_text())} · ETA {escape(view.eta_text())}")
                facts.append(f"Current: {escape(view.current or '—')}")
                fraction = view.fraction
                bar.update(total=100, progress=(fraction or 0) * 100)
            self.query_one("#progress-facts", Static).update("\n".join(facts))
            return
        if self.step != RESULT:
            self.show_step(RESULT)
            self.show_result(job)

    def show_result(self, job) -> None:
        label, role = model.status_label(job.status)
        result = job.result or {}
        lines = [f"[b]7. Result[/]: [${role}][b]{escape(label)}[/][/] restore of {escape(job.subject)} into "
                 f"[b]{escape(self.target)}[/]"]
        if job.status == "succeeded":
            lines.append(f"{result.get('files', 0):,} files, {model.size_text(result.get('bytes_written', 0))} written"
                         + (f", {result.get('skipped_identical', 0):,} already identical"
                            if result.get("skipped_identical") else ""))
            if result.get("verified"):
                lines.append("[$success]✓[/] every restored file was checked against its stored hashes while written")
            for key in ("verification", "baselines", "notes"):
                if result.get(key):
                    lines.append(f"· {escape(key)}: {escape(str(result[key]))[:500]}")
            lines.append("Checking the target against the backup (a second dry run)…")
            if self.source_type == "files":
                self.check_after(self.backup, self.target, self.includes)
        else:
            lines.append(f"[$error]{escape(job.error or 'no message')}[/]")
            lines.append("Files restored before the stop are whole (each is written to a temporary name, then "
                         "renamed); running the restore again fetches only what is missing.")
        self._result_lines = lines
        self.query_one("#result-text", Static).update("\n".join(lines))

    @work(thread=True, exclusive=True, group="wizard-check", exit_on_error=False)
    def check_after(self, backup: dict, target: str, includes: list[str]) -> None:
        from insite_console import restore

        try:
            plan = restore.run(self.app.workspace, backup["id"], target, includes=includes, dry_run=True)
            summary = plan.get("summary", {})
            differ = summary.get("to_create", 0) + summary.get("to_overwrite", 0) + summary.get("to_repair", 0)
            if differ == 0:
                text = (f"[$success]✓ the target matches the backup:[/] {summary.get('identical', 0):,} "
                        "item(s) identical to what was recorded at backup time")
            else:
                text = f"[$error]✗ {differ:,} item(s) in the target differ from the backup[/]"
        except Exception as exc:
            text = f"[$warning]▲ could not check the target: {escape(model_error(exc))}[/]"
        self.app.call_from_thread(self._after_checked, text)

    def _after_checked(self, text: str) -> None:
        self.after_check = text
        lines = [line for line in self._result_lines if not line.startswith("Checking the target")]
        self._result_lines = lines + [text]
        self.query_one("#result-text", Static).update("\n".join(self._result_lines))


def preflight(backup: dict, target: str, plan: dict, source_type: str) -> list[tuple[bool | None, str]]:
    """(ok, text) per check: True passed, False blocks the restore, None is a warning."""
    checks: list[tuple[bool | None, str]] = [
        (True, f"restore point {backup['id']} is a successful {backup['type']} backup"),
        (True, "the manifest and the file listing are readable and authentic"),
    ]
    summary = plan.get("summary", {})
    age = model.age_text(model.parse_time(backup.get("finished_at") or backup["started_at"]))
    checks.append((None, f"data-loss window: changes made after {model.short_time(backup['started_at'])} UTC "
                         f"({age}) are not in this backup"))
    if source_type == "files":
        base = nearest_existing(Path(target))
        writable = os.access(base, os.W_OK)
        checks.append((writable, f"{base} is writable" if writable else f"{base} is not writable by this user"))
        try:
            free = shutil.disk_usage(base).free
            need = summary.get("bytes_to_write", 0)
            checks.append((free >= need, f"free space {model.size_text(free)} for {model.size_text(need)} to write"))
        except OSError as exc:
            checks.append((None, f"free space unknown: {exc.strerror}"))
    for problem in plan.get("problems") or []:  # the engine's own pre-flight (e.g. physical PostgreSQL)
        checks.append((False, str(problem)))
    overwrite, repair = summary.get("to_overwrite", 0), summary.get("to_repair", 0)
    checks.append((True, "nothing existing is overwritten") if not overwrite else
                  (None, f"{overwrite:,} existing item(s) will be overwritten (you will type the target to confirm)"))
    if repair:
        checks.append((None, f"{repair:,} identical item(s) get their mode, owner, times or attributes put back"))
    return checks
