"""DR drills: a scenario's plan as a timeline of steps, a tabletop or live drill run in a worker
thread, manual steps marked here, injects, the summary, and playback of finished drills.

The drill itself is the engine's (dr/drill.py): this screen only calls its thread-safe
`mark`, `inject`, `respond` and `snapshot`, and shows the events its listener posts. Playback
rebuilds each moment from the stored timeline (`drill.snapshot_at`), so what it shows is what
was recorded, in the recorded order. A drill another process runs is followed from its record
in the catalog (`refresh_watch`, on the console's refresh timer), with no controls.
"""

from __future__ import annotations

import logging

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.markup import escape
from textual.widgets import DataTable, Header, RichLog, Static

from insite_console import clock, who
from insite_console.dr import drill as dr_drill
from insite_console.dr import history, report, scenarios
from insite_console.errors import InsiteError
from insite_console.tui import commands, model
from insite_console.tui.dialogs.confirm import ChoiceDialog, ConfirmDialog, TextDialog
from insite_console.tui.messages import DrillDone, DrillEvent
from insite_console.tui.screens.base import InsiteScreen, selected_key
from insite_console.tui.widgets.fit import Col, fill_table
from insite_console.tui.widgets.footer import InsiteFooter
from insite_console.tui.widgets.styles import role_style

log = logging.getLogger("insite_console.tui")

# how a drill is started: (mode, speed, auto)
START_CHOICES = {
    "tabletop": ("tabletop", 1.0, False),
    "tabletop60": ("tabletop", 60.0, False),
    "rehearsal": ("tabletop", 600.0, True),
    "live": ("live", 1.0, False),
}
SPEEDS = (1, 10, 60, 600, 3600)
FINDINGS_SHOWN = 5  # in the summary; the report has them all
TICK = 0.25
LIVE_ACTIONS = ("start_drill", "mark_done", "mark_failed", "mark_skipped", "inject", "respond", "stop_drill",
                "add_finding")
# a narrow terminal keeps the step, its state and owner; the rest is dropped whole
STEP_COLUMNS = [
    Col("n", "#"), Col("status", "Status"), Col("action", "Step"), Col("role", "Owner", 1),
    Col("est", "Est.", 3), Col("took", "Took", 2), Col("after", "After", 4), Col("kind", "Kind", 5),
]
PLAYBACK_ACTIONS = ("play_pause", "step_event", "faster", "slower")


def operator() -> str:
    """Who marks a step: USER@HOST, as the timeline records it."""
    return f"{who.user()}@{model.HOST}"


def make_clock(speed: float) -> dr_drill.DrillClock:
    """The drill clock (tests replace it with one they control)."""
    return dr_drill.DrillClock(speed)


class DrillsScreen(InsiteScreen):
    SCOPE = "drills"
    BINDINGS = commands.bindings("drills")

    def __init__(self) -> None:
        super().__init__()
        self.scenarios: list[scenarios.Scenario] = []
        self.load_error: str | None = None
        self.scenario: scenarios.Scenario | None = None
        self.drill: dr_drill.Drill | None = None  # the drill running now
        self.job = None  # its ConsoleJob (so quitting asks, and Live jobs lists it)
        self.snap: dict | None = None
        self.events: list[dict] = []  # the timeline shown (live, or played back so far)
        self.record: dict | None = None  # the finished drill shown (the summary), or the one played back
        self.playback: dict | None = None  # {"record", "pos", "t", "playing", "speed"}
        self.watching: str | None = None  # a drill another process runs, followed from the catalog
        self._unwatched: set[str] = set()  # drills the operator stopped watching
        self._watch_shown = 0  # its events already in the timeline
        self._waiting_seen: set[str] = set()
        self._shown_second = -1

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        with Vertical(id="drills"):
            yield Static(id="drill-head")
            with Vertical(id="drill-plan-box", classes="box") as box:
                box.border_title = "Plan"
                yield DataTable(id="drill-steps", cursor_type="row", zebra_stripes=False)
            with Vertical(id="drill-summary-box", classes="box") as box:
                box.border_title = "Summary"
                yield Static(id="drill-summary")
            with Vertical(id="drill-log-box", classes="box") as box:
                box.border_title = "Timeline"
                yield RichLog(id="drill-log", wrap=True, markup=True, auto_scroll=True, min_width=20)
        yield InsiteFooter()

    def on_mount(self) -> None:
        table = self.query_one("#drill-steps", DataTable)
        self.query_one("#drill-summary-box").display = False
        try:
            self.scenarios = scenarios.load(self.app.workspace)
        except InsiteError as exc:
            self.load_error = str(exc)
        self.scenario = self.scenarios[0] if self.scenarios else None
        self.set_interval(TICK, self._tick, name="drill-tick")
        # the console's refresh timer bumps catalog_version when another process wrote
        self.watch(self.app, "catalog_version", lambda _: self.refresh_watch(), init=False)
        self.show_all()
        self.refresh_watch()
        table.focus()

    def on_unmount(self) -> None:
        if self.drill is not None:  # the console is closing: the drill ends, recorded as cancelled
            self.drill.cancel.cancel("the console was closed")

    # ----- what is shown ---------------------------------------------------------------

    def _steps(self) -> list[dict]:
        """The steps shown: the record's (playback, a finished drill) or the scenario's plan."""
        if self.record is not None:
            return self.record.get("steps", [])
        if self.scenario is None:
            return []
        return [{"id": s.id, "action": s.action, "role": s.role, "kind": s.kind, "after": s.after,
                 "estimate_seconds": s.estimate_seconds} for s in scenarios.order(self.scenario)]

    def _state(self) -> dict[str, dict]:
        if self.playback is not None or self.watching is not None:
            return self.snap["steps"] if self.snap else {}
        if self.drill is not None and self.snap:
            return self.snap["steps"]
        if self.record is not None:
            return {s["id"]: {"status": s["status"], "started": s.get("starts_at_second"),
                              "finished": s.get("ends_at_second")} for s in self.record.get("steps", [])}
        return {}

    def show_all(self) -> None:
        self.show_head()
        self.show_steps()
        self.show_summary()
        self.refresh_bindings()

    def show_head(self) -> None:
        head = self.query_one("#drill-head", Static)
        if self.load_error:
            head.update(f"[$error]✗ the DR scenarios do not load: {escape(self.load_error)}[/]")
            return
        if self.scenario is None and self.record is None:
            head.update("No DR scenario is defined.")
            return
        rto, rpo = self._targets()
        if self.record is not None:
            name, sid = self.record.get("name", ""), self.record.get("scenario", "")
        else:
            name, sid = self.scenario.name, self.scenario.id
        first = f"[b]{escape(name)}[/] ({escape(sid)})"
        if self.scenario is not None and self.record is None:
            first += f" · {escape(self.scenario.tier)}"
        first += f" · RTO {clock.human_duration(rto)} · RPO {clock.human_duration(rpo)}"
        second = ""
        if self.playback is not None:
            pb = self.playback
            second = (f"[b]{'▶ playback' if pb['playing'] else '❚❚ paused (space: play)'}[/] ×{pb['speed']:g} of drill "
                      f"{escape(self.record['id'])} ({escape(self.record.get('mode') or '')}) · event {pb['pos']}/"
                      f"{len(self.record.get('events', []))} · ")
        elif self.drill is not None:
            second = (f"[$primary]▶ {'rehearsal' if self.drill.auto else escape(self.drill.mode)}[/]"
                      + (f" ×{self.drill.clock.speed:g}" if self.drill.clock.speed != 1 else "") + " · ")
        elif self.watching is not None:
            speed = (self.record.get("clock") or {}).get("speed", 1)
            second = (f"[$primary]◉ watching[/] {'rehearsal' if self.record.get('auto') else escape(self.record['mode'])}"
                      + (f" ×{speed:g}" if speed != 1 else "") + f" run by {escape(self.record.get('by') or '?')} "
                      "[dim](another process; no controls here)[/] · ")
            heard = (self.record.get("clock") or {}).get("at")
            quiet = (clock.now() - clock.parse_iso(heard)).total_seconds() if heard else None
            if quiet is not None and quiet > 3 * dr_drill.PUBLISH_SECONDS:  # it publishes every 30 s while alive
                second += (f"[$warning]▲ not heard from for {escape(clock.human_duration(quiet))}: its process may be "
                           "gone (another host's cannot be checked)[/] · ")
        elif self.record is not None:
            label, role = _status(self.record["status"])
            first += f" · drill {escape(self.record['id'])} [${role}]{escape(label)}[/]"
        lines = [first]
        snap = self.snap
        if snap is not None and (self.drill is not None or self.playback is not None or self.watching is not None):
            elapsed, projected = snap["elapsed_seconds"], snap["projected_rto_seconds"]
            level = snap["level"]
            verdict = (f"[$error]✗ misses it by {clock.human_duration(projected - rto)}[/]" if projected > rto
                       else "[$success]on track[/]")
            lines.append(second + f"⏱ [b]{_hms(elapsed)}[/] · " + (f"[$warning]level {level}[/]" if level else "level 0")
                         + f" · projected RTO [b]{clock.human_duration(projected)}[/] / {clock.human_duration(rto)} "
                         + verdict)
        elif self.drill is None and self.record is None:
            who = ", ".join(sorted(self.scenario.plan.team)) or "no team"
            points = self._trend()
            if points:
                missed = sum(1 for p in points if not p["meets_rto"])
                lines.append(f"RTO trend [b]{report.sparkline(points)}[/] {escape(report.trend_text(points))}"
                             + (f" · [$error]{missed} of {len(points)} missed[/]" if missed else ""))
            lines.append(f"[dim]{escape(self.scenario.description)}[/]\nTeam: {escape(who)}. "
                         + ("Press [b]s[/] to start a drill, [b]p[/] for another scenario, [b]h[/] for playback."
                            if not self.app.read_only else "Press [b]p[/] for another scenario, [b]h[/] for playback."))
        head.update("\n".join(lines))

    def _trend(self) -> list[dict]:
        """The scenario's measured RTO per drill, oldest first (the DR report's trend)."""
        try:
            rows = self.app.workspace.catalog.drills(self.scenario.id, limit=report.TREND, finished=True)
        except Exception:  # a locked catalog: no trend this time, the next refresh tries again
            return []
        return report.trend([row["record"] for row in rows])

    def _targets(self) -> tuple[float, float]:
        if self.record is not None:
            return self.record.get("rto_seconds") or 0, self.record.get("rpo_seconds") or 0
        return self.scenario.rto_seconds, self.scenario.rpo_seconds

    def on_resize(self) -> None:
        self.show_steps()  # what the plan drops on a narrow terminal depends on the width

    def show_steps(self) -> None:
        table = self.query_one("#drill-steps", DataTable)
        selected = self.selected_step()
        steps = self._steps()
        state = self._state()
        # the step's words get what the other columns leave (under 100 columns: #, status, owner)
        width = max(18, self.size.width - 96) if self.size.width >= 100 else max(12, self.size.width - 44)
        rows = []
        for step in steps:
            st = state.get(step["id"], {})
            status = st.get("status")
            label, role = _status(status) if status else ("·", "secondary")
            took = ""
            if st.get("finished") is not None and st.get("started") is not None:
                took = clock.human_duration(st["finished"] - st["started"])
                if st["finished"] - st["started"] > step["estimate_seconds"] + 1e-6:
                    took += " ▲"
            elif st.get("started") is not None and self.snap is not None:
                took = clock.human_duration(self.snap["elapsed_seconds"] - st["started"]) + "…"
            rows.append((step["id"], {
                "n": step["id"], "status": Text(label, style=role_style(self.app, role)),
                "action": _clip(step["action"], width),
                "role": _clip(step["role"], 12) if self.size.width < 100 else step["role"],
                "est": clock.human_duration(step["estimate_seconds"]), "took": took,
                "after": ", ".join(step.get("after", [])) or "—", "kind": step["kind"],
            }))
        fill_table(table, STEP_COLUMNS, rows, self.size.width - 4)  # the box: border and padding
        ids = [s["id"] for s in steps]
        waiting = [i for i in ids if state.get(i, {}).get("status") == "waiting" and i not in self._waiting_seen]
        if waiting and self.drill is not None:
            selected = waiting[0]  # a step that now waits for the operator takes the selection, once
            self._waiting_seen.update(waiting)
        if ids:
            table.move_cursor(row=ids.index(selected) if selected in ids else 0)

    def show_summary(self) -> None:
        box = self.query_one("#drill-summary-box")
        record = self.record
        done = record is not None and self.watching is None and (
            self.playback is None or self.playback["pos"] >= len(record.get("events", [])))
        box.display = done
        if not done:
            return
        label, role = _status(record["status"])
        rto_word = "[$success]met[/]" if record.get("meets_rto") else "[$error]MISSED[/]"
        rpo_word = {True: "[$success]met[/]", False: "[$error]MISSED[/]",
                    None: "[$warning]not measured[/]"}[record.get("meets_rpo")]
        loss = record.get("data_loss_seconds")
        lines = [f"[${role}][b]{escape(label)}[/][/] · recovery {clock.human_duration(record['recovery_seconds'])} "
                 f"against RTO {clock.human_duration(record['rto_seconds'])}: {rto_word} · data loss "
                 f"{clock.human_duration(loss) if loss is not None else 'n/a'} against RPO "
                 f"{clock.human_duration(record['rpo_seconds'])}: {rpo_word}"]
        over = [s for s in record.get("steps", []) if s.get("seconds") is not None
                and s["seconds"] > s["estimate_seconds"] + 1e-6]
        if over:
            lines.append("[$warning]▲ over their estimate:[/] " + "; ".join(
                f"{escape(s['id'])} {clock.human_duration(s['seconds'])} (est. {clock.human_duration(s['estimate_seconds'])})"
                for s in over))
        for item in record.get("missing", []):
            lines.append(f"[$warning]○ not carried out:[/] {escape(item)}")
        if record.get("failed_steps"):
            lines.append(f"[$error]✗ failed:[/] {escape(', '.join(record['failed_steps']))}")
        for item in record.get("cleanup_problems", []):
            lines.append(f"[$error]✗ cleanup:[/] {escape(item)}")
        found = record.get("findings", [])
        for item in found[:FINDINGS_SHOWN]:
            lines.append(f"[$accent]▸ {escape(item['owner'])}:[/] {escape(item['text'])} (due {escape(item['due'][:10])})")
        if len(found) > FINDINGS_SHOWN:
            lines.append(f"[dim]▸ {len(found) - FINDINGS_SHOWN} more findings: see `insite-console drill report`[/]")
        stored = record.get("stored_in") or {}
        for item in stored.get("problems", []):
            lines.append(f"[$warning]▲ not stored in a repository:[/] {escape(item)}")
        self.query_one("#drill-summary", Static).update("\n".join(lines))

    def log_event(self, event: dict) -> None:
        kind = event["type"]
        text = escape(history.event_text(event))
        style = {"escalation": "$warning", "inject": "$accent", "step_missing": "$warning"}.get(kind)
        if kind == "step_finished":
            style = "$" + _status(event["status"])[1]
        if kind == "drill_finished":
            style = "$" + _status(event["status"])[1]
        line = f"[dim]{_hms(event['t'])}[/] " + (f"[{style}]{text}[/]" if style else text)
        self.query_one("#drill-log", RichLog).write(Text.from_markup(_theme_markup(self.app, line)), expand=True)

    def reset_log(self) -> None:
        self.query_one("#drill-log", RichLog).clear()

    def selected_step(self) -> str | None:
        return selected_key(self.query_one("#drill-steps", DataTable))

    # ----- actions and what applies now -------------------------------------------------

    def can_run(self, action: str) -> bool | None:
        running = self.drill is not None
        if action in PLAYBACK_ACTIONS:
            return True if self.playback is not None else False
        if action == "start_drill":
            return False if running or self.playback is not None or self.watching is not None else (
                True if self.scenario else None)
        if action == "pick_scenario":
            return False if running or self.playback is not None else True
        if action == "playback":
            return False if running else True
        if action in ("mark_done", "mark_failed", "mark_skipped"):
            if not running:
                return False
            step = self.selected_step()
            return True if step and self._state().get(step, {}).get("status") == "waiting" else None
        if action in ("inject", "stop_drill"):
            return True if running else False
        if action == "add_finding":  # to the running drill, or to the finished one shown
            return True if running or (self.record is not None and self.playback is None and self.watching is None
                                       and self.record.get("status") != "running") else False
        if action == "respond":
            return True if running and any(e["type"] == "inject" for e in self.events) else False
        return True

    @on(DataTable.RowHighlighted, "#drill-steps")
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.refresh_bindings_if_changed("mark_done", "mark_failed", "mark_skipped")

    def action_pick_scenario(self) -> None:
        if self.drill is not None or not self.scenarios:
            return
        self.app.push_screen(ChoiceDialog("DR scenario", "Which scenario?",
                                          [(s.id, s.name) for s in self.scenarios]), self._picked)

    def _picked(self, choice: str | None) -> None:
        if not choice:
            return
        self.scenario = next(s for s in self.scenarios if s.id == choice)
        self._leave_record()
        self.show_all()

    def _leave_record(self) -> None:
        if self.watching is not None:  # not picked up again by the next refresh
            self._unwatched.add(self.watching)
        self.record, self.playback, self.snap, self.events, self.watching = None, None, None, [], None
        self.reset_log()

    def action_back(self) -> None:
        if self.playback is not None or (self.record is not None and self.drill is None):
            self._leave_record()
            self.show_all()
            return
        super().action_back()

    # ----- running a drill --------------------------------------------------------------

    def action_start_drill(self) -> None:
        if self.drill is not None or self.scenario is None or self.app.read_only:
            return
        self.app.push_screen(ChoiceDialog(
            f"Start a drill of {self.scenario.name}",
            "Tabletop: the team talks the plan through; you mark each manual step done, failed or skipped, and "
            "automated steps (restores, checks) run for real. ×60 runs the clock 60 times faster.\n"
            "Rehearsal: manual steps are marked done after their estimate (like --auto): for trying a plan, "
            "not evidence that the team can carry it out.\n"
            "Live: real time, for a drill on real systems.",
            [("tabletop", "Tabletop"), ("tabletop60", "Tabletop ×60"), ("rehearsal", "Rehearsal"),
             ("live", "Live")]), self._start)

    def _start(self, choice: str | None) -> None:
        if not choice or self.drill is not None:
            return
        from insite_console.workspace import Workspace

        mode, speed, auto = START_CHOICES[choice]
        ws = Workspace(self.app.workspace.config)  # the drill's own catalog connection and repositories
        job = self.app._new_job("drill", self.scenario.id, detached=False)
        try:
            self.drill = dr_drill.Drill(ws, self.scenario, mode=mode, auto=auto, drill_clock=make_clock(speed),
                                        listener=lambda event, snap: self.post_message(DrillEvent(event, snap)),
                                        cancel=job.cancel)
        except InsiteError as exc:
            ws.close()
            job.status, job.error = "failed", str(exc)
            self.notify(f"✗ cannot start the drill: {model.plain_error(exc)}", severity="error", timeout=8)
            return
        self.job = job
        self._leave_record()
        self._waiting_seen = set()
        self.snap = self.drill.snapshot()
        self.show_all()
        self._run(self.drill)

    @work(thread=True, group="drill", exit_on_error=False)
    def _run(self, drill: dr_drill.Drill) -> None:
        try:
            self.post_message(DrillDone(record=drill.run()))
        except InsiteError as exc:
            self.post_message(DrillDone(error=str(exc)))
        except Exception as exc:  # a bug: the traceback goes to the log, the operator reads one line
            log.exception("drill of %s failed", drill.scenario.id)
            self.post_message(DrillDone(error=model.plain_error(exc)))
        finally:
            drill.ws.close()

    @on(DrillEvent)
    def drill_event(self, message: DrillEvent) -> None:
        if self.drill is None or message.snapshot.get("id") != self.drill.id:
            return
        self.events.append(message.event)
        self.snap = message.snapshot
        self.log_event(message.event)
        if message.event["type"] == "escalation":
            self.notify(f"▲ escalation level {message.event['level']}: notify {', '.join(message.event['notify'])}",
                        severity="warning", timeout=8)
        self.show_head()
        self.show_steps()
        self.refresh_bindings()

    @on(DrillDone)
    def drill_done(self, message: DrillDone) -> None:
        job, self.drill = self.job, None
        self.job = None
        if message.error is not None:
            self.notify(f"✗ the drill could not run: {message.error}", severity="error", timeout=12)
            status = "failed"
        else:
            self.record = message.record
            status = message.record["status"]
            label, role = _status(status)
            self.notify(f"{label}: drill of {message.record['name']}",
                        severity={"success": "information", "error": "error"}.get(role, "warning"), timeout=10)
        if job is not None:
            job.status, job.result, job.error = status, message.record, message.error
            self.app._refresh_job_view(job)
            self.app.jobs_version += 1
        self.snap = None
        self.show_all()

    def _tick(self) -> None:
        if self.drill is not None:
            before = _statuses(self.snap)
            try:
                self.snap = self.drill.snapshot()
            except RuntimeError:  # the drill thread changed a step while we copied: next tick
                return
            if self.is_active:
                self.show_head()
                second = int(self.snap["elapsed_seconds"])
                if _statuses(self.snap) != before or second != self._shown_second:  # a state, or a running time
                    self._shown_second = second
                    self.show_steps()
                    self.refresh_bindings()
        elif self.watching is not None and self.record is not None:
            self.snap = dr_drill.live_snapshot(self.record)
            if self.is_active:
                self.show_head()
        elif self.playback is not None and self.playback["playing"]:
            pb = self.playback
            pb["t"] += TICK * pb["speed"]
            events = sorted(self.record.get("events", []), key=lambda e: e["seq"])
            moved = False
            while pb["pos"] < len(events) and events[pb["pos"]]["t"] <= pb["t"]:
                self.log_event(events[pb["pos"]])
                pb["pos"] += 1
                moved = True
            if pb["pos"] >= len(events):
                pb["playing"] = False
            self.snap = dr_drill.snapshot_at(self.record, pb["pos"], now=pb["t"] if pb["playing"] else None)
            self.show_head()
            if moved:
                self.show_steps()
                self.show_summary()
                self.refresh_bindings()

    # ----- watching a drill another process runs ----------------------------------------

    def refresh_watch(self) -> None:
        """Follow a drill another console or `drill run` runs, from its record in the catalog:
        the first running one when nothing else is shown, then the one followed until it ends."""
        if self.drill is not None or self.playback is not None or (self.record is not None and self.watching is None):
            return
        catalog = self.app.workspace.catalog
        try:
            if self.watching is not None:
                record = catalog.drill(self.watching)
            else:
                record = next((d["record"] for d in catalog.drills(limit=10) if d["status"] == "running"
                               and d["id"] not in self._unwatched and not catalog.drill_ended(d["record"])), None)
            ended = catalog.drill_ended(record) if record and record["status"] == "running" else None
        except Exception:  # a locked catalog: the next refresh tries again
            return
        if record is None:
            return
        if ended:
            self.notify(f"stopped watching drill {record['id']}: {ended}", severity="warning", timeout=8)
            self._leave_record()
            self.show_all()
            return
        if self.watching is None:
            self.reset_log()
            self.watching, self._watch_shown = record["id"], 0
            self.scenario = next((s for s in self.scenarios if s.id == record["scenario"]), self.scenario)
            self.notify(f"◉ watching the drill of {record['name']} run by {record.get('by') or 'another process'}",
                        timeout=6)
        self.record = record
        events = sorted(record.get("events", []), key=lambda e: e["seq"])
        for event in events[self._watch_shown:]:
            self.log_event(event)
        self._watch_shown = len(events)
        self.events = events
        if record["status"] == "running":
            self.snap = dr_drill.live_snapshot(record)
        else:  # it ended: its summary, as for a drill run here
            self.watching, self.snap = None, None
            label, _ = _status(record["status"])
            self.notify(f"{label}: drill of {record['name']} (watched)", timeout=8)
        self.show_all()

    def _mark(self, status: str) -> None:
        drill = self.drill
        step_id = self.selected_step()
        if drill is None or step_id is None or self._state().get(step_id, {}).get("status") != "waiting":
            return
        action = next((s["action"] for s in self._steps() if s["id"] == step_id), step_id)
        extra = " The drill will then be incomplete, never passed." if status == "skipped" else ""
        self.app.push_screen(
            TextDialog(f"Step {step_id}: {status}", f"{action}\n\nA note for the timeline (what happened, who):{extra}",
                       ok_label=f"Mark {status}", placeholder="note (Enter: mark, Esc: cancel)"),
            lambda note: drill.mark(step_id, status, note, by=operator()) if note is not None else None)

    def action_mark_done(self) -> None:
        self._mark("done")

    def action_mark_failed(self) -> None:
        self._mark("failed")

    def action_mark_skipped(self) -> None:
        self._mark("skipped")

    def action_inject(self) -> None:
        drill = self.drill
        if drill is None:
            return
        self.app.push_screen(
            TextDialog("Inject", "What happens now? (e.g. \"the DBA is unreachable\", \"the newest backup fails "
                       "verification\")", ok_label="Inject", required=True),
            lambda text: drill.inject(text, by=operator()) if text else None)

    def action_respond(self) -> None:
        drill = self.drill
        injects = [e for e in self.events if e["type"] == "inject"]
        if drill is None or not injects:
            return
        last = injects[-1]
        self.app.push_screen(
            TextDialog("Response", f"The team's response to: {last['text']}", ok_label="Record", required=True),
            lambda text: drill.respond(last["seq"], text, by=operator()) if text else None)

    def action_add_finding(self) -> None:
        drill, record = self.drill, self.record
        if drill is None and (record is None or not self.can_run("add_finding")):
            return
        scenario = drill.scenario if drill is not None else next(
            (s for s in self.scenarios if s.id == record["scenario"]), None)
        roles = sorted(scenario.plan.team) if scenario is not None and scenario.plan.team else sorted(
            {s["role"] for s in self._steps()})
        step = self.selected_step()

        def owned(text: str, owner: str | None) -> None:
            if not owner:
                return
            if drill is not None:
                drill.finding(text, owner, step=step, by=operator())
                self.notify(f"finding for {owner} recorded in the drill", timeout=4)
            else:
                self._add_finding(record["id"], text, owner)

        def written(text: str | None) -> None:
            if text:
                self.app.push_screen(ChoiceDialog("Owner", f"Who owns it?\n\n{text}", [(r, r) for r in roles]),
                                     lambda owner: owned(text, owner))

        self.app.push_screen(TextDialog("Finding", "What should change? An action for the improvement plan (due "
                                        "before the next drill is):", ok_label="Next", required=True), written)

    @work(thread=True, group="drill-finding", exit_on_error=False)
    def _add_finding(self, drill_id: str, text: str, owner: str) -> None:
        from insite_console.dr import findings
        from insite_console.workspace import Workspace

        ws = Workspace(self.app.workspace.config)  # sealing into the repositories: not on the UI thread
        try:
            findings.add(ws, drill_id, text, owner, by=operator())
            record = history.get(ws, drill_id)
        except InsiteError as exc:
            self.app.call_from_thread(self.notify, f"✗ the finding was not added: {exc}", severity="error", timeout=8)
            return
        finally:
            ws.close()
        self.app.call_from_thread(self._finding_added, record)

    def _finding_added(self, record: dict) -> None:
        if self.record is not None and self.record.get("id") == record["id"]:
            self.record = record
            self.show_summary()
        self.notify(f"finding added to drill {record['id']}", timeout=4)

    def action_stop_drill(self) -> None:
        drill = self.drill
        if drill is None:
            return
        self.app.push_screen(
            ConfirmDialog("Stop the drill?", "The drill stops now and is recorded as cancelled (scratch restores "
                          "are cleaned up).", yes_label="Stop the drill", no_label="Keep running"),
            lambda yes: drill.cancel.cancel(f"stopped from the console by {operator()}") if yes else None)

    # ----- playback ---------------------------------------------------------------------

    def action_playback(self) -> None:
        if self.drill is not None:
            return
        drills = self.app.workspace.catalog.drills(limit=8, finished=True)
        if not drills:
            self.notify("no finished drill yet: start one with s (or `insite-console drill run`)", timeout=4)
            return
        self.app.push_screen(ChoiceDialog(
            "Play back a drill", "Which drill? (newest first)",
            [(d["id"], f"{d['scenario']} {model.short_time(d['started_at'])} {d['status']}") for d in drills]),
            self._play)

    def _play(self, drill_id: str | None) -> None:
        if not drill_id:
            return
        try:
            record = history.get(self.app.workspace, drill_id)
        except InsiteError as exc:
            self.notify(f"✗ {exc}", severity="error", timeout=8)
            return
        self._leave_record()
        self.record = record
        self.playback = {"pos": 0, "t": 0.0, "playing": False, "speed": 60.0}  # space plays, n steps
        self.snap = dr_drill.snapshot_at(record, 0)
        self.show_all()

    def action_play_pause(self) -> None:
        pb = self.playback
        if pb is None:
            return
        if pb["pos"] >= len(self.record.get("events", [])):  # at the end: play again from the start
            self._play(self.record["id"])
            pb = self.playback
        pb["playing"] = not pb["playing"]
        self.show_head()

    def action_step_event(self) -> None:
        pb = self.playback
        if pb is None:
            return
        events = sorted(self.record.get("events", []), key=lambda e: e["seq"])
        pb["playing"] = False
        if pb["pos"] < len(events):
            self.log_event(events[pb["pos"]])
            pb["t"] = events[pb["pos"]]["t"]
            pb["pos"] += 1
        self.snap = dr_drill.snapshot_at(self.record, pb["pos"])
        self.show_all()

    def action_faster(self) -> None:
        self._speed(+1)

    def action_slower(self) -> None:
        self._speed(-1)

    def _speed(self, direction: int) -> None:
        pb = self.playback
        if pb is None:
            return
        index = min(range(len(SPEEDS)), key=lambda i: abs(SPEEDS[i] - pb["speed"]))
        pb["speed"] = float(SPEEDS[max(0, min(len(SPEEDS) - 1, index + direction))])
        self.show_head()


def _status(status: str | None) -> tuple[str, str]:
    return model.status_label(status)


def _statuses(snap: dict | None) -> dict:
    return {k: v.get("status") for k, v in snap["steps"].items()} if snap else {}


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _theme_markup(app, markup: str) -> str:
    """RichLog takes Rich markup, which knows no theme variables: `[$warning]` becomes a colour."""
    for role in ("warning", "error", "success", "accent", "primary", "secondary"):
        value = app.theme_variables.get(role)
        if value:
            markup = markup.replace(f"[${role}]", f"[{value}]")
    return markup
