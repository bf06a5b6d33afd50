"""The insite console: a Textual app over the engine API.

Jobs: verify runs in a thread worker in this process. Backups and restores run, by default,
as a detached child process (see tui/jobs.py) so they survive a dropped SSH session; with
`detach_jobs=False` they run in thread workers here (tests, benchmarks). Either way progress
reaches the UI only as messages: `JobProgress` (coalesced with `can_replace`) from a worker
thread, or the catalog `runs` table, which the engine updates about once a second and the
console polls, so jobs of the scheduler or a cron CLI run show up the same way.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import OrderedDict
from typing import Callable

from textual import on, work
from textual.app import App
from textual.reactive import var
from textual.worker import Worker, WorkerState, get_current_worker

from insite_console import clock, who
from insite_console.errors import Cancelled, InsiteError
from insite_console.tui import commands, jobs, model, themes
from insite_console.tui.dialogs.confirm import ChoiceDialog, ConfirmDialog, MessageDialog
from insite_console.tui.messages import JobFinished, JobProgress

log = logging.getLogger("insite_console.tui")


class InsiteApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "insite-console"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = commands.bindings("app")
    COMMANDS = App.COMMANDS | {commands.InsiteCommands}

    jobs_version = var(0)  # bumped when a job changes; screens watch it
    catalog_version = var(0)  # bumped when the catalog changed (any process)
    storage_version = var(0)  # bumped when a storage probe or the key check changed what is known

    def __init__(self, workspace, read_only: bool = False, theme: str | None = None, detach_jobs: bool = True,
                 poll_seconds: float | None = None, alerts: bool = True, probe_seconds: float | None = None) -> None:
        from insite_console.tui.screens.catalog import CatalogScreen
        from insite_console.tui.screens.dashboard import DashboardScreen
        from insite_console.tui.screens.drills import DrillsScreen
        from insite_console.tui.screens.history import HistoryScreen
        from insite_console.tui.screens.jobs import JobsScreen
        from insite_console.tui.screens.restore import RestoreWizard

        self.MODES = {"dashboard": DashboardScreen, "catalog": CatalogScreen, "jobs": JobsScreen,
                      "restore": RestoreWizard, "drills": DrillsScreen, "history": HistoryScreen}
        super().__init__()
        self.workspace = workspace
        self.read_only = read_only
        self.detach_jobs = detach_jobs
        console_settings = workspace.config.console
        self.poll_seconds = poll_seconds or float(console_settings.get("refresh_seconds", 1))
        self.requested_theme = theme or console_settings.get("theme")
        self.console_jobs: dict[str, jobs.ConsoleJob] = {}
        self.job_views: dict[str, model.JobView] = {}
        self.own_pids: set[int] = set()
        self.manifest_cache: OrderedDict[str, dict] = OrderedDict()
        self._keys = itertools.count(1)
        self._data_version: int | None = None
        self._last_reap = 0.0
        self.alerts = alerts
        self._alerted: dict[str, str] = {}
        self._poll_failing = False
        self._missed_alerted: dict[str, str | None] = {}
        # one stat per storage, on the refresh timer but at most every 10 s (an object store bills requests)
        self.probe_seconds = probe_seconds if probe_seconds is not None else max(self.poll_seconds, 10.0)
        self._last_probe = float("-inf")
        self.storage_probes: dict[str, dict] = {}  # name -> Workspace.probe_storage()
        self.key_problems: dict[str, str] = {}  # storage -> why its repository key does not open
        self.sub_title = workspace.config.path.name + ("  ·  READ-ONLY" if read_only else "")

    # ----- start-up ---------------------------------------------------------------------

    def on_mount(self) -> None:
        for theme in themes.load_themes(self.workspace.config.base_dir).values():
            self.register_theme(theme)
        self.set_theme(self.requested_theme)
        keymap = self.workspace.config.console.get("keymap")
        if isinstance(keymap, dict):
            self.set_keymap({str(k): str(v) for k, v in keymap.items()})
        self.poll_catalog()
        self.set_interval(self.poll_seconds, self.poll_catalog, name="poll-catalog")
        self.switch_mode("dashboard")
        self.check_keys()

    def set_theme(self, name: str | None) -> None:
        name = name or themes.default_theme()
        if name not in self.available_themes:
            self.notify(f"theme {name!r} is not known; using {themes.DEFAULT}. Known: "
                        + ", ".join(sorted(self.available_themes)), severity="warning")
            name = themes.DEFAULT
        self.theme = name

    def action_next_theme(self) -> None:
        cycle = themes.CYCLE
        index = cycle.index(self.theme) if self.theme in cycle else -1
        self.theme = cycle[(index + 1) % len(cycle)]
        self.notify(f"theme: {self.theme}", timeout=2)

    # ----- actions and their checks -----------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return commands.allowed(self, "app", action)

    def action_show_dashboard(self) -> None:
        self.switch_mode("dashboard")

    def action_show_catalog(self) -> None:
        self.switch_mode("catalog")

    def action_show_jobs(self) -> None:
        self.switch_mode("jobs")

    def action_show_restore(self) -> None:
        self.switch_mode("restore")

    def action_show_drills(self) -> None:
        self.switch_mode("drills")

    def action_show_history(self) -> None:
        self.switch_mode("history")

    def action_help(self) -> None:
        from insite_console.tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def open_catalog(self, policy: str | None = None) -> None:
        self.switch_mode("catalog")
        self.screen.show_policy(policy)

    def open_backup(self, backup_id: str) -> None:
        from insite_console.tui.screens.detail import BackupDetailScreen

        backup = self.workspace.catalog.backup(backup_id)
        if backup is None:
            self.notify(f"no backup {backup_id} in the catalog", severity="error")
            return
        self.switch_mode("catalog")
        self.push_screen(BackupDetailScreen(backup))

    def open_restore(self, backup_id: str | None = None) -> None:
        if self.read_only:
            return
        self.switch_mode("restore")
        if backup_id:
            self.screen.preset(backup_id)

    def action_backup_now(self) -> None:
        policy = getattr(self.screen, "selected_policy", lambda: None)()
        if policy:
            self.start_backup(policy)
            return
        names = sorted(self.workspace.config.policies)
        if len(names) == 1:
            self.start_backup(names[0])
            return
        if not names:
            self.notify("no policy in the config: add a [policy.NAME] table", severity="error")
            return
        self.push_screen(ChoiceDialog("Backup now", "Which policy?", [(n, n) for n in names]),
                         lambda choice: self.start_backup(choice) if choice else None)

    async def action_quit(self) -> None:
        mine = [j for j in self.console_jobs.values() if j.status == "running" and not j.detached]
        if not mine:
            self.exit(0)
            return

        def answer(yes: bool | None) -> None:
            if yes:
                for job in mine:
                    job.cancel.cancel("the console was closed")
                self.exit(0)

        self.push_screen(ConfirmDialog(
            "Quit?", f"{len(mine)} job(s) run inside this console and will be cancelled: "
            + ", ".join(f"{j.kind} {j.subject}" for j in mine) + ".", yes_label="Quit and cancel"), answer)

    # ----- jobs -------------------------------------------------------------------------

    def _new_job(self, kind: str, subject: str, detached: bool) -> jobs.ConsoleJob:
        job = jobs.ConsoleJob(key=f"console-{next(self._keys)}", kind=kind, subject=subject, detached=detached)
        self.console_jobs[job.key] = job
        return job

    def running_runs(self, kind: str, subject: str) -> list[model.JobView]:
        return [v for v in self.job_views.values() if v.running and v.kind == kind and v.subject == subject]

    def start_backup(self, policy: str, backup_type: str | None = None) -> jobs.ConsoleJob | None:
        if self.read_only:
            return None
        if self.running_runs("backup", policy) or any(
                j.status == "running" and j.kind == "backup" and j.subject == policy for j in self.console_jobs.values()):
            self.notify(f"a backup of {policy} is already running (see Jobs, key 3)", severity="warning")
            return None
        args = ["backup", policy, "--json"] + (["--type", backup_type] if backup_type else [])
        job = self._launch("backup", policy, args,
                           lambda ws, progress, cancel: _backup_run(ws, policy, backup_type, progress, cancel))
        if job is not None:
            self.notify(f"▶ backup of {policy} started" + (" (runs on if the console closes)" if job.detached else ""),
                        timeout=4)
        return job

    def start_restore(self, backup_id: str, target: str, includes: list[str], overwrite: bool,
                      at=None, reason: str | None = None) -> jobs.ConsoleJob | None:
        if self.read_only:
            return None
        args = ["restore", backup_id, "--target", target, "--json"]
        for pattern in includes:
            args += ["--include", pattern]
        if overwrite:
            args.append("--yes")
        if at is not None:
            args += ["--at", clock.iso_precise(at)]
        if reason:
            args += ["--reason", reason]
        return self._launch("restore", backup_id, args,
                            lambda ws, progress, cancel: _restore_run(ws, backup_id, target, includes, overwrite,
                                                                      at, progress, cancel, reason))

    def start_verify(self, backup_id: str, deep: bool) -> jobs.ConsoleJob | None:
        if self.read_only:
            return None
        job = self._new_job("verify", backup_id, detached=False)
        self._run_inprocess(job, lambda ws, progress, cancel: _verify_run(ws, backup_id, deep, progress, cancel))
        self.notify(f"▶ {'deep' if deep else 'quick'} verify of {backup_id} started", timeout=3)
        return job

    def start_recovery(self, plan: str, at=None, point: str | None = None, overwrite: bool = False,
                       reason: str | None = None) -> jobs.ConsoleJob | None:
        """A platform recovery (recover PLAN), detached like a restore; the flow is screens/platform.py."""
        from insite_console.tui.screens.platform import recover_args, recover_call

        if self.read_only:
            return None
        return self._launch("recover", plan, recover_args(plan, at, point, overwrite, reason),
                            recover_call(plan, at, point, overwrite, reason))

    def _launch(self, kind: str, subject: str, args: list[str], call: Callable) -> jobs.ConsoleJob | None:
        if not self.detach_jobs:
            job = self._new_job(kind, subject, detached=False)
            self._run_inprocess(job, call)
            return job
        try:
            process, base = jobs.spawn(self.workspace, args, f"{kind}-{subject}")
        except OSError as exc:
            self.push_screen(MessageDialog(f"Cannot start the {kind}", f"{exc.strerror or exc}"))
            return None
        job = self._new_job(kind, subject, detached=True)
        job.pid, job.log_path = process.pid, base
        self.own_pids.add(process.pid)
        self._watch_detached(job, process)
        return job

    @work(thread=True, group="jobs", exit_on_error=False)
    def _run_inprocess(self, job: jobs.ConsoleJob, call: Callable) -> None:
        from insite_console.workspace import Workspace

        # A workspace per job: its own repository objects and catalog connections, so two
        # jobs never share an open pack, and the UI's reads never wait on a job.
        ws = Workspace(self.workspace.config)
        try:
            with who.acting_as("console"):
                result = call(ws, lambda p: self.post_message(JobProgress(job.key, p)), job.cancel)
            self.post_message(JobFinished(job.key, result=result))
        except Cancelled as exc:
            self.post_message(JobFinished(job.key, error=str(exc), status="cancelled"))
        except InsiteError as exc:
            self.post_message(JobFinished(job.key, error=str(exc), status="failed"))
        except Exception as exc:  # a bug: keep the traceback in the log, show a message
            log.exception("%s %s failed", job.kind, job.subject)
            self.post_message(JobFinished(job.key, error=model.plain_error(exc), status="failed"))
        finally:
            ws.close()

    @work(thread=True, group="watch", exit_on_error=False)
    def _watch_detached(self, job: jobs.ConsoleJob, process) -> None:
        worker = get_current_worker()
        while process.poll() is None:
            if worker.is_cancelled:  # the console is closing; the job runs on
                return
            time.sleep(0.2)
        result, error = jobs.read_outcome(job.log_path, process.returncode)
        status = "succeeded" if process.returncode == 0 and error is None else (
            "cancelled" if process.returncode == 130 else "failed")
        self.post_message(JobFinished(job.key, result=result, error=error, status=status))

    @on(JobProgress)
    def job_progress(self, message: JobProgress) -> None:
        job = self.console_jobs.get(message.key)
        if job is None:
            return
        progress = message.progress
        job.progress = progress
        if progress.run_id and job.run_id is None:
            job.run_id = progress.run_id
        view = self.job_views.get(job.run_id or job.key)
        if view is None:
            view = model.JobView(id=job.run_id or job.key, kind=job.kind, subject=job.subject, status="running",
                                 started_at=job.started_at, origin="this console", pid=os.getpid(), host=model.HOST,
                                 started_by=f"{who.user()}@{model.HOST} · console")
            self.job_views[view.id] = view
        if view.running:
            view.phase = progress.phase
            view.bytes_done, view.bytes_total = progress.bytes_done, progress.bytes_total
            view.files_done, view.files_total = progress.files_done, progress.files_total
            view.current = progress.current
            view.sample()
        self.jobs_version += 1

    @on(JobFinished)
    def job_finished(self, message: JobFinished) -> None:
        job = self.console_jobs.get(message.key)
        if job is None:
            return
        job.status = message.status
        job.result = message.result
        job.error = message.error
        if job.run_id is None and message.result and job.kind in ("backup", "restore"):
            job.run_id = message.result.get("id")
        self._refresh_job_view(job)
        what = f"{job.kind} of {job.subject}"
        if message.status == "succeeded":
            detail = ""
            if message.result and job.kind == "backup":
                detail = f": {message.result.get('files', 0)} files, {model.size_text(message.result.get('bytes_read'))} read"
            if message.result and job.kind == "verify":
                ok = message.result.get("status") == "ok"
                problems = message.result.get("problems") or []
                self.notify(f"{'✓' if ok else '✗'} verify of {job.subject}: "
                            + ("ok" if ok else f"{len(problems)} problem(s): {problems[0] if problems else ''}"),
                            severity="information" if ok else "error", timeout=8)
            else:
                self.notify(f"✓ {what} succeeded{detail}", timeout=6)
        elif message.status == "cancelled":
            view = self.job_views.get(job.run_id or job.key)
            by = f" by {view.cancelled_by}" if view and view.cancelled_by else ""
            self.notify(f"■ {what} cancelled{by}", severity="warning", timeout=6)
        else:
            self.notify(f"✗ {what} failed: {message.error}", severity="error", timeout=12)
        self.poll_catalog()
        self.catalog_version += 1
        self.jobs_version += 1

    def _refresh_job_view(self, job: jobs.ConsoleJob) -> None:
        if job.run_id and job.run_id in self.job_views:
            row = self.workspace.catalog.run(job.run_id)
            if row:
                self.job_views[job.run_id] = model.job_from_run(row, self.own_pids)
            if job.key in self.job_views:
                del self.job_views[job.key]
            return
        view = self.job_views.get(job.key)
        if view is None:
            view = model.JobView(id=job.key, kind=job.kind, subject=job.subject, status=job.status,
                                 started_at=job.started_at, origin="this console", pid=os.getpid(), host=model.HOST,
                                 started_by=f"{who.user()}@{model.HOST} · console")
            self.job_views[job.key] = view
        view.status = job.status
        if job.status == "cancelled" and not view.cancelled_by:
            view.cancelled_by = who.me()  # only this console cancels its own run-less jobs
        view.phase = "done" if job.status == "succeeded" else job.status
        view.error = job.error
        view.finished_at = clock.iso(clock.now())

    def ask_cancel_console_job(self, job_key: str | None, what: str, body: str, keep: str) -> None:
        """The wizards' "cancel?" for their own running job: No by default, then cancel_job."""
        job = self.console_jobs.get(job_key) if job_key else None
        if job is None or job.status != "running":
            return
        view = self.job_views.get(job.run_id or job.key) or model.JobView(
            id=job.key, kind=job.kind, subject=job.subject, status="running", pid=job.pid, host=model.HOST)
        self.push_screen(ConfirmDialog(f"Cancel the {what}?", f"Stop this {what}?\n\n{body}",
                                       yes_label=f"Cancel the {what}", no_label=keep),
                         lambda yes: self.cancel_job(view) if yes else None)

    def cancel_job(self, view: model.JobView) -> None:
        """Cancel a running job: our worker's token, or SIGINT to the job's process on this host."""
        by = who.me()
        catalog = self.workspace.catalog
        for job in self.console_jobs.values():
            if job.status == "running" and (job.run_id == view.id or job.key == view.id) and not job.detached:
                if job.run_id:
                    catalog.cancel_requested(job.run_id, by)
                job.cancel.cancel(f"cancelled by {by}")
                self.notify(f"cancelling {job.kind} of {job.subject}…", timeout=3)
                return
        if view.host and view.host != model.HOST:
            self.notify(f"this job runs on host {view.host}; cancel it there", severity="warning")
            return
        # the signal stops every run of that process (a recovery and the restore it is on): each
        # records who stopped it, before the signal
        same = [v.id for v in self.job_views.values()
                if v.running and v.pid and v.pid == view.pid and v.host == view.host and not v.id.startswith("console-")]
        for run_id in {view.id, *same}:
            catalog.cancel_requested(run_id, by)
        if view.pid and jobs.interrupt(view.pid):
            self.notify(f"cancelling {view.kind} of {view.subject} (signalled process {view.pid})…", timeout=3)
        else:
            for run_id in {view.id, *same}:
                catalog.cancel_requested(run_id, None)  # nobody cancelled it after all
            self.notify(f"cannot signal process {view.pid}: it has ended or belongs to another user",
                        severity="error")

    # ----- catalog polling --------------------------------------------------------------

    def poll_catalog(self) -> None:
        """Read the runs table (cheap: one indexed query) and note what changed."""
        catalog = self.workspace.catalog
        try:
            now = time.monotonic()
            if now - self._last_reap > 10:
                self._last_reap = now
                catalog.reap_dead_runs()
            version = catalog.db.execute("PRAGMA data_version").fetchone()[0]
            rows = catalog.runs(limit=50)
        except Exception as exc:  # a locked or vanished catalog: say so once, try again next tick
            if not self._poll_failing:
                self._poll_failing = True
                log.error("cannot read the catalog", exc_info=exc)
                self.notify(f"cannot read the catalog: {model.plain_error(exc)} (retrying)", severity="error", timeout=8)
            return
        if self._poll_failing:
            self._poll_failing = False
            self.notify("✓ the catalog is readable again", timeout=4)
        changed = version != self._data_version
        self._data_version = version
        seen = set()
        for row in rows:
            seen.add(row["id"])
            old = self.job_views.get(row["id"])
            view = model.job_from_run(row, self.own_pids)
            for job in self.console_jobs.values():
                # the job's own run (a recovery's process also runs its components' restores)
                if job.detached and job.pid == row.get("pid") and job.run_id is None and job.kind == row["kind"]:
                    job.run_id = row["id"]
                if job.run_id == row["id"] and job.key in self.job_views:
                    del self.job_views[job.key]
            if old is not None:
                if old.running and view.running and old.origin == "this console" and old.bytes_done >= view.bytes_done:
                    continue  # our own worker's messages are fresher than the catalog mirror
                view.samples = old.samples
                view.bytes_per_second, view.files_per_second = old.bytes_per_second, old.files_per_second
                external = view.origin == "other process" or view.origin.startswith("host")
                if old.running and not view.running and external:
                    label, _ = model.status_label(view.status)
                    self.notify(f"{label}: {view.kind} of {view.subject} (started elsewhere)"
                                + (f": {view.error}" if view.error else ""),
                                severity="information" if view.status == "succeeded" else "warning", timeout=8)
                if (old.status, old.bytes_done, old.files_done, old.phase) != (
                        view.status, view.bytes_done, view.files_done, view.phase):
                    changed = True
            else:
                changed = True
            if view.running:
                view.sample()
            self.job_views[row["id"]] = view
        mine = {job.key for job in self.console_jobs.values()}
        for stale in [key for key, view in self.job_views.items()
                      if key not in seen and key not in mine and not view.running]:
            del self.job_views[stale]  # fell out of the newest 50 runs
        if changed:
            self.catalog_version += 1
            self.jobs_version += 1
        if self.alerts:  # every tick: a breach is a matter of time passing, not of a catalog change
            self.check_alerts()
        if now - self._last_probe >= self.probe_seconds:
            self._last_probe = now
            self.probe_storages()

    # ----- storages and keys: what is known to be wrong, before the first action ----------

    @work(thread=True, exclusive=True, group="probe", exit_on_error=False)
    def probe_storages(self) -> None:
        results = {name: self.workspace.probe_storage(name) for name in sorted(self.workspace.config.storages)}
        self.call_from_thread(self._probed, results)

    def _probed(self, results: dict[str, dict]) -> None:
        for name, probe in results.items():
            old = self.storage_probes.get(name)
            if probe["state"] != "ok" and (old is None or old["state"] != probe["state"]):
                self.notify(f"✗ {probe['detail']}", severity="error", timeout=12)
            elif probe["state"] == "ok" and old is not None and old["state"] != "ok":
                self.notify(f"✓ storage {name} holds its repository again", timeout=6)
        if results != self.storage_probes:
            self.storage_probes = results
            self.storage_version += 1

    @work(thread=True, exclusive=True, group="keys", exit_on_error=False)
    def check_keys(self) -> None:
        """Open each repository key at start (in a thread: the first paint stays fast), so a wrong
        or missing passphrase is a banner now rather than a failure at the first action."""
        from insite_console.errors import ConfigError, ObjectNotFound, WrongPassphrase

        problems = {}
        for name in sorted(self.workspace.config.storages):
            try:
                self.workspace.repository(name)
            except WrongPassphrase as exc:
                problems[name] = str(exc)
            except ConfigError as exc:  # no passphrase at all (variable unset, file unreadable)
                problems[name] = f"no passphrase: {exc}"
            except (InsiteError, ObjectNotFound, OSError):
                continue  # a missing or unreadable repository: the storage probe says so
        self.call_from_thread(self._keys_checked, problems)

    def _keys_checked(self, problems: dict[str, str]) -> None:
        self.key_problems = problems
        for name, text in problems.items():
            self.notify(f"✗ storage {name}: {text}", severity="error", timeout=12)
        self.storage_version += 1

    def banner_lines(self) -> list[str]:
        """What is known to be wrong with storages and keys, for the dashboard's red banner."""
        lines = [probe["detail"] for probe in self.storage_probes.values() if probe["state"] != "ok"]
        lines += [f"storage {name}: cannot open the repository key: {text}; backups and restores will fail "
                  "until the passphrase is right (then restart the console)"
                  for name, text in self.key_problems.items()]
        return lines

    def check_alerts(self) -> None:
        """Toast when a policy breaches its RPO, has never run, or its last run failed; once
        per change, and again when it recovers."""
        try:
            rows = model.policy_health(self.workspace)
        except Exception as exc:
            log.warning("health check failed: %s", model.plain_error(exc))
            return
        for row in rows:
            shown, name = row["shown"], row["policy"]
            previous = self._alerted.get(name)
            if shown in ("breach", "never", "failing") and previous != shown:
                label, _ = model.status_label(shown)
                detail = {"breach": f"last success {row['age_vs_rpo']} (age / RPO)",
                          "never": "no successful backup yet",
                          "failing": f"last run failed: {row['last_failure_error'] or '?'}"}[shown]
                self.notify(f"{label}: policy {name}: {detail}", severity="error" if shown != "never" else "warning",
                            timeout=10)
            elif shown in ("ok", "late") and previous in ("breach", "never", "failing"):
                self.notify(f"✓ policy {name} is within its RPO again", timeout=6)
            self._alerted[name] = shown
            missed = row.get("missed_run")
            if missed and self._missed_alerted.get(name) != missed["at"]:
                self.notify(f"▲ policy {name}: missed {model.short_clock(missed['at'])}: {missed['reason']}",
                            severity="warning", timeout=10)
            self._missed_alerted[name] = missed["at"] if missed else None

    def job_list(self) -> list[model.JobView]:
        views = list(self.job_views.values())
        views.sort(key=lambda v: (not v.running, _neg_time(v.started_at)))
        return views[:60]

    # ----- reads for the screens ----------------------------------------------------------

    def read_manifest(self, backup: dict) -> dict:
        """A backup's manifest (from storage; cached). Called from worker threads."""
        cached = self.manifest_cache.get(backup["id"])
        if cached is not None:
            return cached
        ws = self.workspace
        repo = ws.repository(ws.storage_for_backup(backup))
        manifest = repo.load_manifest(backup["id"])
        self.manifest_cache[backup["id"]] = manifest
        while len(self.manifest_cache) > 64:
            self.manifest_cache.popitem(last=False)
        return manifest

    def read_tree(self, backup: dict, limit: int = 50_000) -> tuple[list, bool]:
        """Up to `limit` entries of a file backup's stored tree. Called from worker threads."""
        from insite_console.repo.tree import TreeReader

        manifest = self.read_manifest(backup)
        repo = self.workspace.repository(self.workspace.storage_for_backup(backup))
        entries = []
        for entry in TreeReader(repo, manifest["tree"]):
            if len(entries) >= limit:
                return entries, True
            entries.append(entry)
        return entries, False

    # ----- errors ---------------------------------------------------------------------

    def report_error(self, what: str, exc: BaseException) -> None:
        """An unexpected failure in a refresh: logged with its traceback, shown as one line."""
        log.error("%s", what, exc_info=exc)
        self.notify(f"{what}: {model.plain_error(exc)}", severity="error", timeout=8)

    @on(Worker.StateChanged)
    def worker_state(self, event: Worker.StateChanged) -> None:
        if event.state is WorkerState.ERROR and event.worker.error is not None:
            log.error("worker %s failed", event.worker.name, exc_info=event.worker.error)
            self.push_screen(MessageDialog("Something went wrong", model.plain_error(event.worker.error)))


def _neg_time(text: str | None) -> float:
    value = model.parse_time(text)
    return -value.timestamp() if value else 0.0


def _backup_run(ws, policy, backup_type, progress, cancel):
    from insite_console import backup

    return backup.run(ws, policy, backup_type, progress=progress, cancel=cancel)


def _restore_run(ws, backup_id, target, includes, overwrite, at, progress, cancel, reason=None):
    from insite_console import restore

    return restore.run(ws, backup_id, target, includes=includes, yes=overwrite, at=at, progress=progress,
                       cancel=cancel, reason=reason)


def _verify_run(ws, backup_id, deep, progress, cancel):
    from insite_console import verify

    return verify.run(ws, backup_id, deep=deep, progress=progress, cancel=cancel)


def run_console(config_path: str | None, read_only: bool = False, theme: str | None = None) -> int:
    """Open the console on a workspace (the CLI's `insite-console` with no command)."""
    import sys

    from insite_console.errors import UsageError
    from insite_console.workspace import Workspace

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("the console needs a terminal (stdin and stdout are not one); in scripts and cron "
                         "use the commands: `insite-console status`, `backups`, `backup POLICY`, …")
    ws = Workspace.load(config_path)  # ConfigError: the CLI prints it and exits 2
    _ = ws.catalog
    log_path = ws.config.state_dir / "console.log"
    try:
        logging.basicConfig(filename=log_path, level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    except OSError:
        pass
    app = InsiteApp(ws, read_only=read_only, theme=theme)
    try:
        app.run()
    finally:
        ws.close()
    return app.return_code or 0
