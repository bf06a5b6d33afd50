"""The restore wizard's platform branch: a recovery plan → the point in time → the plan per
component (restore point, data loss, what is overwritten, checks, skew) → typed confirmation →
per-component progress → the result with the data loss of each component.

The plan is the engine's `recovery.plan()`, a dry run of every component: nothing is written
before the confirmation. The recovery runs as a console job (detached, like a restore), so it is
in Live jobs with each component's restore; this screen follows the recovery's record in the
catalog, which the engine rewrites as each component starts and finishes.
"""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.markup import escape
from textual.widgets import Button, ContentSwitcher, DataTable, Header, Input, Label, Select, Static

from insite_console import clock
from insite_console.errors import Cancelled, InsiteError
from insite_console.tui import commands, model
from insite_console.tui.messages import PlanReady
from insite_console.tui.screens.base import InsiteScreen
from insite_console.tui.widgets.backup_detail import model_error
from insite_console.tui.widgets.footer import InsiteFooter
from insite_console.tui.widgets.styles import role_style

STEPS = ("Plan and time", "Components", "Confirm", "Progress", "Result")
CHOOSE, COMPONENTS, CONFIRM, PROGRESS, RESULT = range(len(STEPS))
STEP_IDS = ("pr-step-choose", "pr-step-components", "pr-step-confirm", "pr-step-progress", "pr-step-result")
CHECK_MARKS = {"ok": "[$success]✓[/]", "failed": "[$error]✗[/]", "unknown": "[$warning]▲[/]"}
#: recovery and component statuses the console's status table does not know
EXTRA_STATUS = {"partial": ("◐ partial", "warning"), "pending": ("· pending", "secondary")}


def recover_args(plan: str, at, point: str | None, overwrite: bool, reason: str | None) -> list[str]:
    """`insite-console recover ...` for a detached recovery job."""
    args = ["recover", plan, "--json"]
    if point:
        args += ["--point", point]
    elif at is not None:
        args += ["--at", clock.iso_precise(at)]
    else:
        args.append("--latest")
    if overwrite:
        args.append("--yes")
    if reason:
        args += ["--reason", reason]
    return args


def recover_call(plan: str, at, point: str | None, overwrite: bool, reason: str | None):
    """The same recovery in a worker thread; anything but `succeeded` ends the job as the CLI's
    exit status would (a partial recovery is not a green job)."""

    def call(ws, progress, cancel):
        from insite_console import recovery

        result = recovery.run(ws, plan, at, yes=overwrite, reason=reason, progress=progress, cancel=cancel,
                              point_id=point)
        if result["status"] == "cancelled":
            raise Cancelled(f"recovery {result['id']} cancelled")
        if result["status"] != "succeeded":
            raise InsiteError(f"recovery {result['id']} {result['status']}: "
                              + "; ".join(f"{c['policy']} {c['status']}" for c in result["components"]
                                          if c["status"] != "succeeded"))
        return result

    return call


def loss_text(seconds) -> str:
    return "—" if seconds is None else ("none" if seconds == 0 else clock.human_duration(seconds))


def point_text(at: str | None) -> str:
    """A restore point to the second (the record and --json keep the microseconds)."""
    return at[:19].replace("T", " ") if at else "—"


def duration_text(seconds: float) -> str:
    return "under a second" if seconds < 1 else f"about {clock.human_duration(seconds)}"


def skew_text(seconds) -> str:
    if seconds is None:
        return "unknown"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else clock.human_duration(seconds)


class PlatformRecoveryScreen(InsiteScreen):
    SCOPE = "restore"
    BINDINGS = commands.bindings("restore")
    DEFAULT_CSS = """
    #pr-steps { padding: 0 1; height: auto; background: $panel; }
    #pr-wizard { height: 1fr; padding: 0 1; }
    .step { height: 1fr; }
    #pr-plan, #pr-at, #pr-reason, #pr-confirm-input { margin: 1 0 0 0; }
    #pr-confirm-input { width: 100%; }
    #pr-about, #pr-at-check, #pr-summary, #pr-checks, #pr-confirm-error, #pr-result-notes { height: auto; padding: 0 1; }
    #pr-summary { margin-bottom: 1; }
    #pr-table { height: auto; max-height: 10; }
    #pr-progress-table, #pr-result-table { height: auto; margin-top: 1; }
    #wizard-nav { height: 1; align: right middle; padding: 0 1; }
    #wizard-nav Button { margin-left: 2; min-width: 12; }
    """

    def __init__(self, plan: str | None = None) -> None:
        super().__init__()
        self.plan_name = plan
        self.step = CHOOSE
        self.at = None
        self.plan: dict | None = None
        self.plan_error: str | None = None
        self.job_key: str | None = None
        self.launched_at: str | None = None
        self.record: dict | None = None

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        yield Static(id="pr-steps")
        with ContentSwitcher(initial="pr-step-choose", id="pr-wizard"):
            with VerticalScroll(id="pr-step-choose", classes="step"):
                yield Label("[b]1. Recover the platform[/]: a recovery plan, then the point in time", markup=True)
                yield Select([], prompt="recovery plan", id="pr-plan", allow_blank=True, compact=True)
                yield Static(id="pr-about")
                yield Input(placeholder=f"empty: the latest · or a time (zone {clock.zone_name(clock.local_zone())} "
                                        "unless typed): -2h, 14:05, yesterday 14:00, 2026-11-27T02:00Z",
                            id="pr-at", compact=True)
                yield Input(placeholder="why (recorded with the result): incident 42, bad deploy…", id="pr-reason",
                            compact=True)
                yield Static(id="pr-at-check")
            with VerticalScroll(id="pr-step-components", classes="step"):  # the checks run past 24 lines
                yield Static("[b]2. The plan per component[/] (a dry run of each: nothing is written)",
                             id="pr-plan-title")
                yield Static(id="pr-summary")
                yield DataTable(id="pr-table", cursor_type="row")
                yield Static(id="pr-checks")
            with VerticalScroll(id="pr-step-confirm", classes="step"):
                yield Static(id="pr-confirm-text")
                yield Input(id="pr-confirm-input", compact=True)
                yield Static(id="pr-confirm-error")
            with Vertical(id="pr-step-progress", classes="step"):
                yield Static(id="pr-progress")
                yield DataTable(id="pr-progress-table", cursor_type="row")
            with VerticalScroll(id="pr-step-result", classes="step"):
                yield Static(id="pr-result")
                yield DataTable(id="pr-result-table", cursor_type="row")
                yield Static(id="pr-result-notes")
        with Horizontal(id="wizard-nav"):
            yield Button("◀ Back", id="pr-back", compact=True)
            yield Button("Next ▶", id="pr-next", variant="primary", compact=True)
        yield InsiteFooter()

    def on_mount(self) -> None:
        plans = sorted(self.app.workspace.config.recoveries)
        select = self.query_one("#pr-plan", Select)
        select.set_options([(f"{name}: {', '.join(self.app.workspace.config.recoveries[name]['components'])}", name)
                            for name in plans])
        if plans:
            select.value = self.plan_name if self.plan_name in plans else plans[0]
        for table_id, columns in (
                # what decides go or no-go first, so an 80-column terminal shows it (Kind last)
                ("#pr-table", ("Component", "Checks", "Restore point (UTC)", "Data loss", "Overwrites", "Size",
                               "Kind")),
                ("#pr-progress-table", ("Component", "Status", "Restore point (UTC)", "Started", "Finished")),
                ("#pr-result-table", ("Component", "Status", "Verified", "Restore point (UTC)", "Data loss",
                                      "Written"))):
            table = self.query_one(table_id, DataTable)
            for title in columns:
                table.add_column(title)
        self.query_one("#pr-confirm-input", Input).display = False
        self.refresh_on_jobs_change(self.follow_job)
        self.set_interval(0.5, self.follow_job, name="platform-follow")
        self.show_step(CHOOSE)

    # ----- navigation -------------------------------------------------------------------------

    def show_step(self, step: int) -> None:
        self.step = step
        self.query_one("#pr-wizard", ContentSwitcher).current = STEP_IDS[step]
        self.show_steps()
        back, nxt = self.query_one("#pr-back", Button), self.query_one("#pr-next", Button)
        back.label = {CHOOSE: "◀ One backup instead", PROGRESS: "■ Cancel recovery",
                      RESULT: "◀ Back to the wizard"}.get(step, "◀ Back")
        nxt.display = step not in (PROGRESS, RESULT)
        nxt.label = "Recover ▶" if step == CONFIRM else "Next ▶"
        nxt.variant = "error" if step == CONFIRM and self.overwritten else "primary"
        nxt.disabled = step == COMPONENTS and not self.plan_ok
        if step == CHOOSE:
            self.show_about()
            self.query_one("#pr-plan", Select).focus()
        elif step == COMPONENTS:
            self.enter_components()
        elif step == CONFIRM:
            self.enter_confirm()
        self.refresh_bindings()

    def show_steps(self) -> None:
        """The step bar; under 100 columns only the current step is named, so it stays one line."""
        narrow = self.size.width < 100
        marks = []
        for i, name in enumerate(STEPS):
            if i == self.step:
                marks.append(f"[b reverse] {i + 1} {name} [/]")
            elif i < self.step:
                marks.append(f"[$success]✓[/] {i + 1}" if narrow else f"[$success]✓[/] {name}")
            else:
                marks.append(f"[dim]{i + 1}[/]" if narrow else f"[dim]{i + 1} {name}[/]")
        self.query_one("#pr-steps", Static).update("Platform recovery: " + " › ".join(marks))

    def on_resize(self) -> None:
        self.show_steps()

    def can_run(self, action: str) -> bool | None:
        if action == "next":
            return True if self.step < PROGRESS else None
        return True

    @on(Button.Pressed, "#pr-next")
    def next_pressed(self) -> None:
        self.action_next()

    @on(Button.Pressed, "#pr-back")
    def back_pressed(self) -> None:
        if self.step == PROGRESS:
            self.ask_cancel()
        else:
            self.action_back()

    def action_next(self) -> None:
        if self.step == CHOOSE:
            if self.apply_at():
                self.show_step(COMPONENTS)
        elif self.step == COMPONENTS:
            if self.plan_ok:
                self.show_step(CONFIRM)
        elif self.step == CONFIRM:
            self.confirm()

    def action_back(self) -> None:
        if self.step in (CHOOSE, RESULT):
            self.dismiss(self.record)
        elif self.step == PROGRESS:  # Esc while it runs: asks to cancel (No is the default)
            self.ask_cancel()
        else:
            self.show_step(self.step - 1)

    def ask_cancel(self) -> None:
        self.app.ask_cancel_console_job(self.job_key, "recovery", "The component being restored stops cleanly "
                                        "between units of work; those not started are skipped. Components already "
                                        "recovered stay recovered.", "Keep recovering")

    # ----- 1. plan and time -------------------------------------------------------------------

    @property
    def selected_plan(self) -> str | None:
        value = self.query_one("#pr-plan", Select).value
        return value if isinstance(value, str) else None

    @on(Select.Changed, "#pr-plan")
    def plan_changed(self) -> None:
        self.plan = None
        self.show_about()

    def show_about(self) -> None:
        from insite_console import recovery

        name = self.selected_plan
        about = self.query_one("#pr-about", Static)
        if name is None:
            about.update("[$warning]▲ no [recovery.NAME] plan in the config[/]")
            return
        settings = self.app.workspace.config.recovery(name)
        lines = [f"{settings['mode']}, on failure {settings['on_failure']}; components in order: "
                 + ", then ".join(f"[b]{escape(c)}[/] into {escape(str(settings['targets'][c]))}"
                                  for c in settings["components"])]
        try:
            newest = recovery.recoverable(self.app.workspace, name)
            lines.append(recoverable_text(newest))
        except Exception as exc:
            lines.append(f"[$warning]▲ newest recoverable point unknown: {escape(model_error(exc))}[/]")
        about.update("\n".join(lines))

    @on(Input.Submitted, "#pr-at")
    def at_submitted(self) -> None:
        if self.apply_at():
            self.query_one("#pr-reason", Input).focus()

    @on(Input.Submitted, "#pr-reason")
    def reason_submitted(self) -> None:
        self.action_next()

    def apply_at(self) -> bool:
        from insite_console import recovery

        text = self.query_one("#pr-at", Input).value.strip()
        check = self.query_one("#pr-at-check", Static)
        if self.selected_plan is None:
            check.update("[$error]✗ choose a recovery plan[/]")
            return False
        if not text:
            self.at = None
            check.update("To the latest restore point of every component")
            return True
        try:
            self.at = clock.parse_when(text, clock.now(), clock.local_zone())
            recovery.refuse_future(self.at, clock.now())
        except (ValueError, InsiteError) as exc:
            self.at = None
            check.update(f"[$error]✗ point in time: {escape(str(exc))}[/]")
            self.query_one("#pr-at", Input).focus()
            return False
        check.update(f"To [b]{self.at:%Y-%m-%d %H:%M:%S}[/] UTC")
        return True

    # ----- 2. components ------------------------------------------------------------------------

    @property
    def plan_ok(self) -> bool:
        return self.plan is not None and bool(self.plan.get("checks_ok"))

    def enter_components(self) -> None:
        self.plan, self.plan_error = None, None
        self.query_one("#pr-summary", Static).update("Planning (a dry run of every component)…")
        self.query_one("#pr-table", DataTable).clear()
        self.query_one("#pr-checks", Static).update("")
        self.query_one("#pr-table", DataTable).focus()
        self.query_one("#pr-next", Button).disabled = True
        self._token = (self.selected_plan, self.at)
        self.run_plan(self.selected_plan, self.at)

    @work(thread=True, exclusive=True, group="platform-plan", exit_on_error=False)
    def run_plan(self, name: str, at) -> None:
        from insite_console import recovery

        try:
            planned = recovery.plan(self.app.workspace, name, at)
        except Exception as exc:
            self.post_message(PlanReady(None, model_error(exc), token=(name, at)))
            return
        self.post_message(PlanReady(planned, token=(name, at)))

    @on(PlanReady)
    def plan_ready(self, message: PlanReady) -> None:
        message.stop()
        if self.step != COMPONENTS or message.token != getattr(self, "_token", None):
            return
        summary = self.query_one("#pr-summary", Static)
        if message.plan is None:
            self.plan_error = message.error
            summary.update(f"[$error]✗ the plan failed:[/] {escape(message.error or '')}")
            return
        self.plan = planned = message.plan
        when = planned["at"] or f"the latest (planned at {planned['planned_at']})"
        lines = [f"Recover [b]{escape(planned['plan'])}[/] to [b]{escape(when)}[/], {planned['mode']}"]
        if planned.get("group_point"):
            g = planned["group_point"]
            lines.append(f"Group restore point [b]{escape(g['id'])}[/] of [group.{escape(g['group'])}] taken at "
                         f"{escape(g['point_at'])}: every component from one moment")
        lines.append(f"Skew between the components' restore points: [b]{skew_text(planned['skew_seconds'])}[/] · "
                     f"{model.size_text(planned['bytes'])} · {duration_text(planned['estimated_seconds'])}, "
                     f"{escape(planned['estimate_basis'])}")
        lines.append("[$success]✓ pre-flight checks passed[/]" if planned["checks_ok"] else
                     "[$error]✗ pre-flight checks FAILED: nothing can be recovered (see the checks below)[/]")
        summary.update("\n".join(lines))
        table = self.query_one("#pr-table", DataTable)
        table.clear()
        check_lines = []
        for c in planned["components"]:
            failed = [k for k in c["checks"] if k["status"] == "failed"]
            loss = loss_text(c["data_loss_seconds"])
            if c["within_rpo"] is not None:  # against the policy's RPO: beyond it in the error colour
                loss = Text(f"{loss} ≤ RPO" if c["within_rpo"] else f"{loss} > RPO",
                            style="" if c["within_rpo"] else role_style(self.app, "error"))
            table.add_row(c["policy"], self.status_text("failed" if failed else "ok"), point_text(c["restore_point_at"]),
                          loss, f"{(c.get('overwrites') or {}).get('items', 0):,}", model.size_text(c["bytes"]),
                          c["kind"])
            if c.get("overwrites"):
                check_lines.append(f"· {escape(c['policy'])}: target now: {escape(c['overwrites']['what'])}")
            for k in c["checks"]:
                check_lines.append(f"{CHECK_MARKS.get(k['status'], '·')} {escape(c['policy'])}: {escape(k['check'])}: "
                                   f"{escape(k['detail'])}")
        self.query_one("#pr-checks", Static).update("\n".join(check_lines))
        self.query_one("#pr-next", Button).disabled = not self.plan_ok

    # ----- 3. confirm ---------------------------------------------------------------------------

    @property
    def overwritten(self) -> list[dict]:
        return [c for c in (self.plan or {}).get("components", []) if (c.get("overwrites") or {}).get("items")]

    def enter_confirm(self) -> None:
        planned = self.plan or {}
        lines = ["[b]3. Confirm[/]", f"Recover plan [b]{escape(planned.get('plan', ''))}[/] to "
                 f"[b]{escape(planned.get('at') or 'the latest restore points')}[/]:"]
        for c in planned.get("components", []):
            lines.append(f"  {escape(c['policy'])} → {escape(str(c['target']))}: backup {escape(str(c['backup_id']))}, "
                         f"data loss {loss_text(c['data_loss_seconds'])}")
        reason = self.query_one("#pr-reason", Input).value.strip()
        lines.append(f"Reason, recorded with the result: [b]{escape(reason)}[/]" if reason else
                     "[dim]No reason given (step 1): the result records who ran it, not why.[/]")
        field = self.query_one("#pr-confirm-input", Input)
        if self.overwritten:
            lines.append("\n[$error][b]✗ the recovery overwrites what these targets hold now:[/][/]")
            for c in self.overwritten:
                lines.append(f"  [$error]{escape(c['policy'])}[/]: {escape(c['overwrites']['what'])}")
            lines.append(f"Type the plan name exactly to confirm: [b]{escape(planned.get('plan', ''))}[/]")
            field.display = True
            field.value = ""
            field.placeholder = f"type {planned.get('plan', '')} here"  # not the name itself: it would look typed
            field.focus()
        else:
            lines.append("\n[$success]✓ nothing existing is overwritten.[/] Press Recover to start.")
            field.display = False
            self.query_one("#pr-next", Button).focus()
        self.query_one("#pr-confirm-error", Static).update("")
        self.query_one("#pr-confirm-text", Static).update("\n".join(lines))

    @on(Input.Submitted, "#pr-confirm-input")
    def confirm_submitted(self) -> None:
        self.confirm()

    def confirm(self) -> None:
        if not self.plan_ok:
            self.show_step(COMPONENTS)
            return
        name = self.plan["plan"]
        if self.overwritten and self.query_one("#pr-confirm-input", Input).value.strip() != name:
            self.query_one("#pr-confirm-error", Static).update(
                "[$error]✗ that is not the plan name: nothing was restored. Type it exactly, or go back.[/]")
            return
        point = (self.plan.get("group_point") or {}).get("id")
        reason = self.query_one("#pr-reason", Input).value.strip() or None
        self.launched_at = clock.iso_precise(clock.now())
        # the group point shown is the one recovered to, even if a newer one is taken meanwhile
        job = self.app.start_recovery(name, at=None if point else self.at, point=point,
                                      overwrite=bool(self.overwritten), reason=reason)
        if job is None:
            return
        self.job_key, self.record = job.key, None
        self.show_step(PROGRESS)
        self.follow_job()

    # ----- 4. progress, 5. result -----------------------------------------------------------------

    def current_record(self) -> dict | None:
        """The recovery this screen started: the plan's newest record begun after the launch."""
        if self.launched_at is None or self.plan is None:
            return None
        for record in self.app.workspace.catalog.recoveries(plan=self.plan["plan"], limit=5):
            if record["started_at"] >= self.launched_at:
                return record
        return None

    def follow_job(self) -> None:
        if self.job_key is None or self.step not in (PROGRESS, RESULT):
            return
        job = self.app.console_jobs.get(self.job_key)
        if job is None:
            return
        self.record = self.current_record() or self.record
        if job.status == "running":
            self.show_progress(job)
        elif self.step != RESULT:
            self.record = (job.result if job.result and job.result.get("components") else None) or self.record
            self.show_step(RESULT)
            self.show_result(job)

    def show_progress(self, job) -> None:
        view = self.app.job_views.get(job.run_id or job.key)
        lines = [f"[b]4. Recovering[/] {escape(job.subject)}"
                 + (" (a detached process: it continues if the console closes)" if job.detached else "")]
        if view is not None:
            lines.append(f"Now: {escape(view.phase or '—')} · {model.size_text(view.bytes_done)}"
                         + (f" of {model.size_text(view.bytes_total)}" if view.bytes_total else "")
                         + f" · {escape(view.rate_text())} · each component is in Live jobs (key 3)")
        lines.append("[dim]Esc or ■ Cancel recovery: stop it (asks first)[/]")
        self.query_one("#pr-progress", Static).update("\n".join(lines))
        table = self.query_one("#pr-progress-table", DataTable)
        table.clear()
        components = (self.record or {}).get("components") or [
            {"policy": c["policy"], "status": "pending", "restore_point_at": c["restore_point_at"],
             "started_at": None, "finished_at": None} for c in (self.plan or {}).get("components", [])]
        for c in components:
            table.add_row(c["policy"], self.status_text(c["status"]), point_text(c["restore_point_at"]),
                          (c["started_at"] or "—")[11:19] or "—", (c["finished_at"] or "—")[11:19] or "—")

    def status_text(self, status: str) -> Text:
        label, role = EXTRA_STATUS.get(status) or model.status_label(status)
        return Text(label, style=role_style(self.app, role))

    def show_result(self, job) -> None:
        record = self.record
        if record is None:
            self.query_one("#pr-result", Static).update(
                f"[b]5. Result[/]: [$error]✗ {escape(job.error or job.status)}[/] (no recovery record was written)")
            return
        label, role = EXTRA_STATUS.get(record["status"]) or model.status_label(record["status"])
        lines = [f"[b]5. Result[/]: [${role}][b]{escape(label)}[/][/] · recovery {escape(record['id'])} of "
                 f"[b]{escape(record['plan'])}[/] in {clock.human_duration(record['recovery_seconds'] or 0)}"]
        if record.get("group_point"):
            lines.append(f"to group restore point {escape(record['group_point']['id'])} "
                         f"(skew {skew_text(record.get('skew_seconds'))})")
        if record["status"] == "cancelled":
            lines.append(f"[$warning]■ cancelled by {escape(record.get('cancelled_by') or 'an operator (unrecorded)')}[/]")
        if record.get("recovered"):
            lines.append(f"Recovered: {escape(', '.join(record['recovered']))}")
        if record.get("failed"):
            lines.append(f"[$error]Not recovered: {escape(', '.join(record['failed']))}[/]")
        self.query_one("#pr-result", Static).update("\n".join(lines))
        table = self.query_one("#pr-result-table", DataTable)
        table.clear()
        notes = []
        for c in record["components"]:
            verified = {True: "✓ verified", False: "✗ NOT verified", None: "▲ unverified"}[c["verified"]]
            table.add_row(c["policy"], self.status_text(c["status"]), verified, point_text(c["restore_point_at"]),
                          loss_text(c["data_loss_seconds"]), model.size_text(c["bytes"]))
            # the whole detail, wrapped below the table (a table cell would cut it at 80 columns)
            if c.get("error"):
                mark = "[$error]✗[/]" if c["status"] == "failed" else "[$warning]■[/]"
                notes.append(f"{mark} {escape(c['policy'])}: {escape(c['error'])}")
            elif c.get("verification"):
                notes.append(f"{'[$success]✓[/]' if c['verified'] else '[$warning]▲[/]'} {escape(c['policy'])}: "
                             f"{escape(c['verification'])}")
        self.query_one("#pr-result-notes", Static).update("\n".join(notes))


def recoverable_lines(ws) -> list[str]:
    """The dashboard's panel: per recovery plan, the newest point the whole platform comes back to."""
    from insite_console import recovery

    lines = []
    for name in sorted(ws.config.recoveries):
        try:
            lines.append(recoverable_text(recovery.recoverable(ws, name)))
        except Exception as exc:  # one plan's unreadable state must not hide the others
            lines.append(f"[$warning]▲ {escape(name)}: unknown: {escape(model_error(exc))}[/]")
    return lines


def recoverable_text(newest: dict) -> str:
    """One line: the newest point in time the whole platform of a plan can be recovered to."""
    if newest["point_at"] is None:
        return f"[$warning]▲ {escape(newest['plan'])}: not recoverable: {escape(newest['problem'] or 'unknown')}[/]"
    at = model.parse_time(newest["point_at"])
    where = (f"group point {escape(newest['group_point'])}" if newest["group_point"]
             else f"limited by {escape(newest['limited_by'])}")
    return (f"[b]{escape(newest['plan'])}[/]: the whole platform to [b]{at:%Y-%m-%d %H:%M:%S}[/] UTC "
            f"({model.age_text(at)}; {where}; skew {skew_text(newest['skew_seconds'])})")

