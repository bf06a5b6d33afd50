"""Run a DR drill: the plan's steps on a drill clock, an event timeline, judged against RTO/RPO.

Automated steps run for real (actions.py); manual steps wait for an operator, who marks them
done, failed or skipped with a note (`Drill.mark`, from any thread: a screen, or the CLI's
prompt through `on_manual`), or with `auto` they are done after their estimate. Steps whose
dependencies are done start at once. Escalations fire when their trigger is reached, plan
injects at their time, facilitator injects whenever `Drill.inject` is called. Each change is an
event handed to `listener(event, snapshot)`; the snapshot has the elapsed time, the escalation
level and the projected RTO. The clock is injectable (`DrillClock(monotonic=…, sleep=…)`), so
tests jump through a two-hour plan at once. A drill passes only when every step was carried out.
Escalations also go to the alert hooks; the running drill's record is kept in the catalog at
each event, so other consoles watch it live; at its end its findings are derived (findings.py).
"""

from __future__ import annotations

import queue
import socket
import sys
import threading
import time
from typing import Any, Callable

from insite_console import alerts, clock, who
from insite_console.dr import actions, findings, history
from insite_console.dr.scenarios import AUTOMATED, Scenario, Step, find, topological
from insite_console.errors import Cancelled, UsageError
from insite_console.events import CancelToken

DONE = ("passed", "done")           # a step that was carried out
NOT_RUN = ("skipped", "not run")    # not carried out: the drill is incomplete
FAILED = ("failed", "blocked")
PUBLISH_SECONDS = 30.0  # a running drill's record is rewritten at least this often (real time)


class DrillClock:
    """Drill time in seconds since the start: real time, with waits `speed` times shorter."""

    def __init__(self, speed: float = 1.0, monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if speed <= 0:
            raise UsageError("--speed must be more than 0")
        self.speed, self._monotonic, self._sleep = speed, monotonic, sleep
        self._base, self._mark = 0.0, monotonic()

    def elapsed(self) -> float:
        return self._base + (self._monotonic() - self._mark)

    def wait_until(self, t: float, wake: threading.Event, cancel: CancelToken) -> None:
        """Sleep until drill time `t` (or until woken: an operator marked a step or an inject came)."""
        while not wake.is_set():
            cancel.check()
            left = t - self.elapsed()
            if left <= 0:
                self._base, self._mark = max(t, self.elapsed()), self._monotonic()
                return
            real = left / self.speed
            self._sleep(min(real, 0.1))
            if real <= 0.1:  # the remaining wait was compressed: drill time reaches t exactly
                self._base, self._mark = t, self._monotonic()
                return
            self._base += min(real, 0.1) * (self.speed - 1)
        wake.clear()


class Drill:
    def __init__(self, ws, scenario: Scenario, mode: str = "tabletop", auto: bool = False,
                 drill_clock: DrillClock | None = None, listener: Callable[[dict, dict], None] | None = None,
                 on_manual: Callable[["Drill", Step], None] | None = None, cancel: CancelToken | None = None):
        if mode not in ("tabletop", "live"):
            raise UsageError(f"drill mode is tabletop or live, not {mode!r}")
        self.ws, self.scenario, self.mode, self.auto = ws, scenario, mode, auto
        self.clock = drill_clock or DrillClock()
        if mode == "live" and self.clock.speed != 1:
            raise UsageError("a live drill runs in real time: --speed is for tabletops")
        self.listener, self.on_manual = listener, on_manual
        self.cancel = cancel or CancelToken()
        self.id = clock.new_id()
        self.events: list[dict] = []
        self.state: dict[str, dict] = {s.id: {"status": "pending"} for s in scenario.steps}
        self.level = 0
        self._fired: set[int] = set()
        self._marks: queue.Queue = queue.Queue()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._senders: list[threading.Thread] = []  # escalation alerts on their way

    # ----- for the operator (any thread) -------------------------------------------------

    def mark(self, step_id: str, status: str, note: str = "", by: str = "operator") -> None:
        """Mark a manual step done, failed or skipped (with a note and who did it)."""
        if status not in ("done", "failed", "skipped"):
            raise UsageError(f"a manual step is marked done, failed or skipped, not {status!r}")
        self._marks.put(("mark", step_id, status, note, by))
        self._wake.set()

    def inject(self, text: str, by: str = "facilitator") -> None:
        self._marks.put(("inject", text, by))
        self._wake.set()

    def respond(self, inject_seq: int, text: str, by: str = "operator") -> None:
        """Record the team's response to an inject (by the inject event's `seq`)."""
        self._marks.put(("response", inject_seq, text, by))
        self._wake.set()

    def finding(self, text: str, owner: str, due: str | None = None, step: str | None = None,
                by: str = "operator") -> None:
        """A finding for the improvement plan (an action, its owner, a due date: ISO, default
        before the next drill is due)."""
        self._marks.put(("finding", text, owner, due, step, by))
        self._wake.set()

    # ----- the timeline ------------------------------------------------------------------

    def _emit(self, event_type: str, **fields) -> dict:
        with self._lock:
            event = {"seq": len(self.events) + 1, "t": round(self.clock.elapsed(), 3), "at": clock.iso(clock.now()),
                     "type": event_type, **fields}
            self.events.append(event)
        if event_type != "drill_finished":
            self._publish()
        if self.listener:
            self.listener(event, self.snapshot())
        return event

    def _publish(self) -> None:
        """The drill as it stands, into the catalog (status `running`): other consoles watch it
        live from there (a read-only console of the tabletop's observers). Never in the way of the
        drill: a locked catalog only makes the watchers' view a moment older."""
        now = self.clock.elapsed()
        self._published = time.monotonic()
        record = {"id": self.id, "scenario": self.scenario.id, "name": self.scenario.name, "mode": self.mode,
                  "status": "running", "started_at": self._started_at, "finished_at": None, "auto": self.auto,
                  "rto_seconds": self.scenario.rto_seconds, "rpo_seconds": self.scenario.rpo_seconds,
                  "recovery_seconds": None, "data_loss_seconds": None, "meets_rto": None, "meets_rpo": None,
                  "missing": [], "failed_steps": [], "cleanup_problems": [], "max_level": self.level,
                  "by": self._by, "process": self._process,
                  "clock": {"t": round(now, 3), "at": clock.iso_precise(clock.now()), "speed": self.clock.speed},
                  "steps": [{"id": s.id, "action": s.action, "role": s.role, "kind": s.kind, "after": s.after,
                             "estimate_seconds": s.estimate_seconds, "status": self.state[s.id]["status"]}
                            for s in self.scenario.steps],
                  "events": list(self.events)}
        try:
            self.ws.catalog.insert_drill(record)
        except Exception as exc:  # sqlite3.OperationalError (locked, read-only)
            print(f"insite-console: drill progress not written to the catalog: {exc}", file=sys.stderr)

    def snapshot(self) -> dict:
        now = self.clock.elapsed()
        return {"id": self.id, "scenario": self.scenario.id, "elapsed_seconds": round(now, 3), "level": self.level,
                "projected_rto_seconds": round(self.projected_rto(now), 3), "rto_seconds": self.scenario.rto_seconds,
                "steps": {k: dict(v) for k, v in self.state.items()}}

    def projected_rto(self, now: float | None = None) -> float:
        """Elapsed plus the remaining critical path: actuals for finished steps, estimates for the rest."""
        now = self.clock.elapsed() if now is None else now
        return critical_path([(s.id, s.after, s.estimate_seconds) for s in _ordered(self.scenario.steps)],
                             self.state, now)

    # ----- running -----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        with who.acting_as("drill"):  # the restores and verifies of its steps say so
            try:
                return self._run()
            except Exception as exc:  # a bug: the drill is not left `running` for its watchers
                current = self.ws.catalog.drill(self.id)
                if current and current["status"] == "running":
                    self.ws.catalog.insert_drill({**current, "status": "failed", "finished_at": clock.iso(clock.now()),
                                                  "missing": [f"the drill stopped: {type(exc).__name__}: {exc}"]})
                raise

    def _run(self) -> dict[str, Any]:
        started = clock.now()
        self._started_at = clock.iso(started)
        self._by, self._process = who.me(), self.ws.catalog.drill_process()  # in the published record
        self._published = time.monotonic()
        ctx = actions.StepContext(self.ws, self.id, started, self.cancel)
        steps = {s.id: s for s in self.scenario.steps}
        timers: list[tuple[float, str, Any]] = [(j.at_seconds, "inject", j) for j in self.scenario.plan.injects]
        self._emit("drill_started", scenario=self.scenario.id, name=self.scenario.name, mode=self.mode,
                   speed=self.clock.speed, auto=self.auto, rto_seconds=self.scenario.rto_seconds,
                   rpo_seconds=self.scenario.rpo_seconds)
        for drop in self.scenario.plan.dropped:
            self._emit("step_missing", **drop)
        self.ws.catalog.event(None, f"DR drill {self.id} of scenario {self.scenario.id} started ({self.mode})")
        status = None
        cleanup: list[str] = []
        try:
            while True:
                self.cancel.check()
                now = self.clock.elapsed()
                self._drain(steps)
                for due, what, item in sorted(t for t in timers if t[0] <= now):
                    timers.remove((due, what, item))
                    if what == "inject":
                        self._emit("inject", text=item.text, by="plan")
                    elif what == "finish" and self.state[item]["status"] == "running":
                        # finished when due, not when this loop noticed (at ×600, a poll is minutes)
                        self._finish(steps[item], "done", "done after its estimate (--auto)", "auto", at=due)
                    elif what == "overrun" and self.state[item]["status"] in ("running", "waiting"):
                        self._escalate_on("overrun", f"step {item} is over its estimate")
                self._escalate_elapsed(now)
                started_any = self._start_ready(steps, ctx, timers)
                if all(st["status"] not in ("pending", "running", "waiting") for st in self.state.values()):
                    break
                if started_any or not self._marks.empty():
                    continue
                upcoming = [t[0] for t in timers] + [e.after_seconds for e in self.scenario.plan.escalations
                                                     if e.after_seconds is not None and e.level not in self._fired]
                # wake at least every PUBLISH_SECONDS of real time: watchers tell a quiet drill from a dead one
                self.clock.wait_until(min(upcoming + [now + PUBLISH_SECONDS * self.clock.speed]), self._wake,
                                      self.cancel)
                if time.monotonic() - self._published >= PUBLISH_SECONDS:
                    self._publish()
        except (Cancelled, KeyboardInterrupt):
            status = "cancelled"
        finally:
            cleanup = ctx.close()
            for sender in self._senders:  # each bounded by its alerts' timeouts
                sender.join()
        record = self._finish_drill(started, status, cleanup)
        if record["status"] != "cancelled":
            alerts.condition(self.ws, "drill_overdue", f"drill:{self.scenario.id}", False,
                             f"DR scenario {self.scenario.id} was drilled: {record['status']} ({self.mode})",
                             {"scenario": self.scenario.id, "drill_id": self.id})
        return record

    def _drain(self, steps: dict[str, Step]) -> None:
        while True:
            try:
                item = self._marks.get_nowait()
            except queue.Empty:
                return
            if item[0] == "inject":
                self._emit("inject", text=item[1], by=item[2])
            elif item[0] == "response":
                self._emit("response", inject=item[1], text=item[2], by=item[3])
            elif item[0] == "finding":
                self._emit("finding", text=item[1], owner=item[2], due=item[3], step=item[4], by=item[5])
            else:
                _, step_id, status, note, by = item
                if step_id in steps and self.state[step_id]["status"] in ("waiting", "running") \
                        and steps[step_id].kind == "manual":
                    self._finish(steps[step_id], status, note, by)

    def _start_ready(self, steps: dict[str, Step], ctx, timers: list) -> bool:
        started = False
        for step in _ordered(steps.values()):
            if self.state[step.id]["status"] != "pending":
                continue
            deps = [self.state[d]["status"] for d in step.after]
            if any(d in ("pending", "running", "waiting") for d in deps):
                continue
            started = True
            if any(d in FAILED for d in deps):
                self._settle(step, "blocked", "a step it depends on failed")
                continue
            if any(d in NOT_RUN for d in deps):
                self._settle(step, "not run", "a step it depends on was not carried out")
                continue
            now = self.clock.elapsed()
            self._escalate_elapsed(now)  # time an operator spent at a prompt (on_manual) counts
            self.state[step.id].update(status="running", started=now)
            self._emit("step_started", step=step.id, action=step.action, role=step.role, kind=step.kind,
                       estimate_seconds=step.estimate_seconds)
            if step.kind in AUTOMATED:
                outcome = actions.run(ctx, step)
                extra = {k: v for k, v in outcome.items() if k not in ("status", "notes")}
                self._finish(step, outcome["status"], outcome.get("notes", ""), "drill", **extra)
            elif step.kind == "wait":
                timers.append((now + step.estimate_seconds, "finish", step.id))
            elif self.auto:
                timers.append((now + step.estimate_seconds, "finish", step.id))
            else:
                self.state[step.id]["status"] = "waiting"
                timers.append((now + step.estimate_seconds, "overrun", step.id))
                if self.on_manual:
                    self.on_manual(self, step)
                    self._drain(steps)
        return started

    def _settle(self, step: Step, status: str, note: str) -> None:
        now = self.clock.elapsed()
        self.state[step.id].update(status=status, started=now, finished=now, note=note)
        self._emit("step_finished", step=step.id, status=status, note=note, by="drill", seconds=0.0)

    def _finish(self, step: Step, status: str, note: str, by: str, at: float | None = None, **extra) -> None:
        now = self.clock.elapsed() if at is None else at
        st = self.state[step.id]
        seconds = now - st["started"]
        st.update(status=status, finished=now, note=note, by=by, **extra)
        over = seconds > step.estimate_seconds + 1e-6
        self._emit("step_finished", step=step.id, status=st["status"], note=note, by=by, seconds=round(seconds, 3),
                   over_estimate=over, **extra)
        if status in FAILED:
            self._escalate_on("failure", f"step {step.id} failed")
        elif over and step.kind != "manual":
            self._escalate_on("overrun", f"step {step.id} took longer than its estimate")

    def _escalate_elapsed(self, now: float) -> None:
        for esc in self.scenario.plan.escalations:
            if esc.after_seconds is not None and esc.level not in self._fired and now >= esc.after_seconds:
                self._fire(esc, f"{clock.human_duration(esc.after_seconds)} elapsed")

    def _escalate_on(self, trigger: str, why: str) -> None:
        for esc in self.scenario.plan.escalations:
            if esc.on == trigger and esc.level not in self._fired:
                self._fire(esc, why)

    def _fire(self, esc, why: str) -> None:
        self._fired.add(esc.level)
        self.level = max(self.level, esc.level)
        team = self.scenario.plan.team
        self._emit("escalation", level=esc.level, trigger=why, notify=esc.notify,
                   contacts={r: team.get(r, {}).get("contact", "") for r in esc.notify},
                   response_seconds=esc.response_seconds)
        self.ws.catalog.event(None, f"DR drill {self.id}: escalation level {esc.level} ({why}): notify "
                              f"{', '.join(esc.notify)}", level="warning")
        if self.ws.config.alerts:  # through the alert hooks, beside the loop: a slow hook must not stop the clock
            contacts = ", ".join(f"{r} ({team.get(r, {}).get('contact') or 'no contact'})" for r in esc.notify)
            message = (f"DR drill {self.id} ({self.mode}) of {self.scenario.name}: escalation level {esc.level} "
                       f"({why}): notify {contacts}")
            details = {"drill_id": self.id, "scenario": self.scenario.id, "mode": self.mode, "level": esc.level,
                       "trigger": why, "notify": esc.notify, "elapsed_seconds": round(self.clock.elapsed(), 3),
                       "response_seconds": esc.response_seconds, "drill": True}
            sender = threading.Thread(target=self._alert, args=("escalation", message, details),
                                      name=f"drill-alert-{esc.level}", daemon=True)
            sender.start()
            self._senders.append(sender)

    def _alert(self, event: str, message: str, details: dict) -> None:
        try:
            alerts.fire(self.ws, event, f"drill:{self.scenario.id}", message, details)
        finally:
            self.ws.catalog.close()  # this thread's connection

    def _finish_drill(self, started, status: str | None, cleanup: list[str]) -> dict[str, Any]:
        scenario = self.scenario
        finished_steps = [st for st in self.state.values() if "finished" in st]
        done = [st["finished"] for st in finished_steps if st["status"] in DONE]
        recovery = max(done, default=0.0)
        losses = [st["data_loss_seconds"] for st in self.state.values() if "data_loss_seconds" in st]
        data_loss = max(losses) if losses else None
        missing = [f"step {d['step']} ({d['kind']}): {d['why']}" for d in scenario.plan.dropped
                   if d["kind"] == "restore"]
        missing += [f"step {sid}: {st['status']}" + (f" ({st['note']})" if st.get("note") else "")
                    for sid, st in self.state.items() if st["status"] in NOT_RUN or st["status"] == "pending"]
        if data_loss is None:
            missing.append("data loss not measured: no restore or check_rpo step was carried out")
        failed = [sid for sid, st in self.state.items() if st["status"] in FAILED]
        meets_rto = recovery <= scenario.rto_seconds
        meets_rpo = None if data_loss is None else data_loss <= scenario.rpo_seconds
        if status is None:
            status = "failed" if failed or not meets_rto or meets_rpo is False else (
                "incomplete" if missing else "passed")
        self._emit("drill_finished", status=status, recovery_seconds=round(recovery, 3), data_loss_seconds=data_loss,
                   missing=missing, cleanup_problems=cleanup)
        steps = []
        for step in scenario.steps:
            st = self.state[step.id]
            steps.append({"id": step.id, "action": step.action, "role": step.role, "kind": step.kind,
                          "policy": step.policy, "after": step.after, "estimate_seconds": step.estimate_seconds,
                          "status": st["status"], "notes": st.get("note", ""), "by": st.get("by"),
                          "starts_at_second": st.get("started"), "ends_at_second": st.get("finished"),
                          "seconds": None if "finished" not in st else round(st["finished"] - st["started"], 3),
                          **{k: v for k, v in st.items()
                             if k in ("backup_id", "bytes_written", "data_loss_seconds", "scratch")}})
        record = {"id": self.id, "scenario": scenario.id, "name": scenario.name, "mode": self.mode,
                  "user": who.user(), "host": socket.gethostname(),
                  "status": status, "started_at": clock.iso(started), "finished_at": clock.iso(clock.now()),
                  "rto_seconds": scenario.rto_seconds, "rpo_seconds": scenario.rpo_seconds,
                  "recovery_seconds": round(recovery, 3), "data_loss_seconds": data_loss,
                  "meets_rto": meets_rto, "meets_rpo": meets_rpo, "max_level": self.level,
                  "missing": missing, "failed_steps": failed, "cleanup_problems": cleanup, "auto": self.auto,
                  "steps": steps, "events": list(self.events)}
        cadence = clock.parse_duration(self.ws.config.dr.get("cadence", "90d")).total_seconds()
        record["findings"] = findings.derive(record, cadence)
        record["stored_in"] = history.save(self.ws, record)
        self.ws.catalog.event(None, f"DR drill {self.id} of {scenario.id} {status}: recovery "
                              f"{clock.human_duration(recovery)} (RTO {clock.human_duration(scenario.rto_seconds)})"
                              + (f"; not carried out: {'; '.join(missing)}" if missing else ""),
                              level="info" if status == "passed" else "error")
        return record


def critical_path(steps: list[tuple[str, list[str], float]], state: dict[str, dict], now: float) -> float:
    """When the last step would finish: `steps` as (id, after, estimate), `state` each step's
    `started`/`finished` drill seconds (a live drill's, or a replayed one's)."""
    finish: dict[str, float] = {}
    pending = list(steps)
    while pending:  # dependency order (plans have no cycles; an unknown dependency counts as done)
        known = {s[0] for s in pending}
        ready = [s for s in pending if not any(d in known for d in s[1])] or pending[:1]
        pending = [s for s in pending if s not in ready]
        for step_id, after, estimate in ready:
            st = state.get(step_id, {})
            if "finished" in st:
                finish[step_id] = st["finished"]
            elif "started" in st:
                finish[step_id] = max(now, st["started"] + estimate)
            else:
                finish[step_id] = max([now] + [finish[d] for d in after if d in finish]) + estimate
    return max(finish.values(), default=now)


def snapshot_at(record: dict, count: int, now: float | None = None) -> dict:
    """A finished drill as it stood after its first `count` events (or at drill time `now`,
    between two of them): the same fields as `Drill.snapshot()`, rebuilt from the recorded
    timeline (playback)."""
    events = sorted(record.get("events", []), key=lambda e: e["seq"])[:count]
    state: dict[str, dict] = {s["id"]: {"status": "pending"} for s in record.get("steps", [])}
    kinds = {s["id"]: s.get("kind") for s in record.get("steps", [])}
    level, now = 0, now or 0.0
    for event in events:
        now = max(now, event["t"])
        step = state.get(event.get("step", ""))
        if event["type"] == "step_started" and step is not None:
            step.update(status="waiting" if kinds.get(event["step"]) == "manual" else "running", started=event["t"])
        elif event["type"] == "step_finished" and step is not None:
            step.setdefault("started", event["t"])
            step.update(status=event["status"], finished=event["t"], note=event.get("note", ""), by=event.get("by"))
        elif event["type"] == "escalation":
            level = max(level, event["level"])
    plan = [(s["id"], s.get("after", []), s.get("estimate_seconds", 0.0)) for s in record.get("steps", [])]
    return {"id": record.get("id"), "scenario": record.get("scenario"), "elapsed_seconds": round(now, 3),
            "level": level, "projected_rto_seconds": round(critical_path(plan, state, now), 3),
            "rto_seconds": record.get("rto_seconds"), "steps": state}


def live_snapshot(record: dict) -> dict:
    """A drill running in another process, as `snapshot()` would give it there now: its
    published timeline, the clock run on from its last publication at the drill's speed."""
    events = record.get("events", [])
    published = record.get("clock") or {}
    now = published.get("t", 0.0)
    if published.get("at"):
        wall = (clock.now() - clock.parse_iso(published["at"])).total_seconds()
        now += max(0.0, wall) * published.get("speed", 1.0)
    return snapshot_at(record, len(events), now=now)


def _ordered(steps) -> list[Step]:
    return topological(list(steps))


def run(ws, scenario_id: str, mode: str = "tabletop", speed: float = 1.0, auto: bool = False,
        listener=None, on_manual=None, cancel: CancelToken | None = None,
        drill_clock: DrillClock | None = None) -> dict[str, Any]:
    """Run one drill of a scenario to its end; returns its record (also stored, see history.py)."""
    drill = Drill(ws, find(ws, scenario_id), mode=mode, auto=auto, drill_clock=drill_clock or DrillClock(speed),
                  listener=listener, on_manual=on_manual, cancel=cancel)
    return drill.run()
