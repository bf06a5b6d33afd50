"""Every user action, declared once.

A `Command` carries its key, footer label, help text and whether it writes. From this one
table come the key bindings of each screen (`bindings`), the footer (Textual shows the
bindings), the command palette (`InsiteCommands`) and the help screen (`help_rows`), so they
cannot drift apart. `--read-only` hides every command with `writes=True` through
`allowed()`, which every screen's `check_action` calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from textual.app import App


@dataclass(frozen=True)
class Command:
    id: str  # the binding id: `[console.keymap]` in config.toml remaps it by this name
    key: str
    action: str  # the action method (without `action_`) on the scope's screen, or on the app
    label: str  # the footer text
    help: str  # one line for the help screen and the palette
    scope: str = "app"  # "app" or a screen name
    writes: bool = False  # hidden in --read-only mode
    show: bool = True  # shown in the footer
    palette: bool = True  # offered in the command palette
    key_display: str | None = None


COMMANDS: tuple[Command, ...] = (
    # everywhere
    Command("dashboard", "1", "show_dashboard", "Dashboard", "Policy health, running jobs, storage, recent events"),
    Command("catalog", "2", "show_catalog", "Catalog", "Every backup: sort, filter, details, actions"),
    Command("jobs", "3", "show_jobs", "Jobs", "Running and recent jobs with progress and log"),
    Command("restore_wizard", "4", "show_restore", "Restore", "Restore wizard: what, which parts, where, plan",
            writes=True),
    Command("drills", "5", "show_drills", "DR", "DR drills: scenarios and plans, tabletop and live drills, playback"),
    # not in the footer: at 80 columns it would push "q Quit" off (help and the palette list it)
    Command("history", "6", "show_history", "History",
            "Restore history and audit: every restore, recovery and drill, who, where, why", show=False),
    Command("backup", "b", "backup_now", "Backup", "Run a backup now (of the selected policy, or choose one)",
            writes=True),
    Command("help", "question_mark", "help", "Help", "Keys of every screen", key_display="?"),
    Command("theme", "t", "next_theme", "Theme", "Switch to the next theme (dark, light, 16-colour)", show=False),
    Command("quit", "q", "quit", "Quit", "Leave the console; jobs it started keep running"),
    # dashboard
    Command("policy_backups", "enter", "open_policy", "Backups", "Show the backups of the selected policy",
            scope="dashboard"),
    Command("policy_trends", "p", "open_trends", "Trends",
            "The selected policy's trends: restore point age against the RPO over a day, backup sizes and "
            "durations", scope="dashboard", show=False),
    # policy trends
    Command("policy_back", "escape", "back", "Back", "Back to the dashboard", scope="policy", show=False),
    # catalog
    Command("filter", "slash", "filter", "Filter", "Filter the catalog (id, policy, source, type, status, storage)",
            scope="catalog", key_display="/"),
    Command("details", "enter", "details", "Details", "Open the selected backup: manifest, chain, files",
            scope="catalog", show=False),
    Command("sort", "s", "sort", "Sort", "Sort by the next column", scope="catalog"),
    Command("reverse", "S", "reverse", "Reverse", "Reverse the sort order", scope="catalog", show=False),
    Command("verify", "v", "verify", "Verify", "Verify the selected backup (quick or deep)", scope="catalog",
            writes=True),
    Command("restore", "r", "restore", "Restore", "Restore the selected backup (opens the wizard)", scope="catalog",
            writes=True),
    Command("forget", "d", "forget", "Forget", "Forget the selected backup (asks first; `prune` frees its data)",
            scope="catalog", writes=True),
    Command("clear", "escape", "back", "Back", "Clear the filter, or go back to the dashboard", scope="catalog",
            show=False),
    # backup detail
    Command("detail_back", "escape", "back", "Back", "Back to the catalog", scope="detail"),
    Command("detail_verify", "v", "verify", "Verify", "Verify this backup (quick or deep)", scope="detail",
            writes=True),
    Command("detail_restore", "r", "restore", "Restore", "Restore this backup (opens the wizard)", scope="detail",
            writes=True),
    Command("detail_forget", "d", "forget", "Forget", "Forget this backup (asks first)", scope="detail", writes=True),
    # jobs
    Command("cancel_job", "c", "cancel_job", "Cancel job", "Cancel the selected running job (asks first)",
            scope="jobs", writes=True),
    Command("jobs_back", "escape", "back", "Back", "Back to the dashboard", scope="jobs", show=False),
    # restore wizard
    Command("wizard_back", "escape", "back", "Back", "Previous step (choices are kept)", scope="restore"),
    Command("wizard_next", "ctrl+n", "next", "Next", "Next step", scope="restore", key_display="^n"),
    # DR drills
    Command("drill_scenario", "p", "pick_scenario", "Scenario", "Pick the DR scenario to show and drill",
            scope="drills"),
    Command("drill_start", "s", "start_drill", "Start", "Start a tabletop, a rehearsal (--auto) or a live drill",
            scope="drills", writes=True),
    Command("drill_done", "d", "mark_done", "Done", "Mark the selected manual step done, with a note",
            scope="drills", writes=True),
    Command("drill_failed", "f", "mark_failed", "Failed", "Mark the selected manual step failed, with a note",
            scope="drills", writes=True),
    Command("drill_skip", "k", "mark_skipped", "Skip",
            "Mark the selected manual step skipped (the drill is then incomplete, never passed)",
            scope="drills", writes=True),
    Command("drill_inject", "i", "inject", "Inject", "Add an inject to the running drill (\"the DBA is unreachable\")",
            scope="drills", writes=True),
    Command("drill_respond", "e", "respond", "Respond", "Record the team's response to the newest inject",
            scope="drills", writes=True, show=False),
    Command("drill_finding", "a", "add_finding", "Finding",
            "Add a finding (an action, its owner) to the improvement plan, during or after a drill",
            scope="drills", writes=True, show=False),
    Command("drill_stop", "x", "stop_drill", "Stop", "Stop the running drill (asks first; recorded as cancelled)",
            scope="drills", writes=True, show=False),
    Command("drill_playback", "h", "playback", "Playback", "Play back a finished drill from the history",
            scope="drills"),
    Command("play_pause", "space", "play_pause", "Play/Pause", "Playback: play or pause", scope="drills",
            key_display="space"),
    Command("play_step", "n", "step_event", "Step", "Playback: one event forward (pauses)", scope="drills"),
    Command("play_faster", "plus", "faster", "Faster", "Playback: faster", scope="drills", key_display="+"),
    Command("play_slower", "minus", "slower", "Slower", "Playback: slower", scope="drills", key_display="-",
            show=False),
    Command("drills_back", "escape", "back", "Back", "Leave the playback, or go back to the dashboard",
            scope="drills", show=False),
    # restore history
    Command("history_back", "escape", "back", "Back", "Back to the dashboard", scope="history", show=False),
    # help
    Command("help_close", "escape", "close", "Close", "Close the help", scope="help"),
)

BY_ID = {command.id: command for command in COMMANDS}
SCOPES = {
    "app": "Everywhere", "dashboard": "Dashboard", "catalog": "Backup catalog", "detail": "Backup details",
    "jobs": "Live jobs", "restore": "Restore wizard", "drills": "DR drills", "history": "Restore history", "policy": "Policy trends", "help": "Help",
}


def bindings(scope: str) -> list[Binding]:
    """The Textual bindings of one scope, generated from the table."""
    return [Binding(c.key, c.action, c.label, show=c.show, id=c.id, key_display=c.key_display)
            for c in COMMANDS if c.scope == scope]


def find(scope: str, action: str) -> Command | None:
    for command in COMMANDS:
        if command.action == action and command.scope in (scope, "app"):
            return command
    return None


def allowed(app: "App", scope: str, action: str) -> bool:
    """False hides the action (footer, palette, key): the read-only check."""
    command = find(scope, action)
    return not (command is not None and command.writes and getattr(app, "read_only", False))


def key_label(command: Command) -> str:
    if command.key_display:
        return command.key_display
    return {"question_mark": "?", "slash": "/", "escape": "esc"}.get(command.key, command.key)


def help_rows(read_only: bool = False) -> list[tuple[str, str, str, str]]:
    """(scope title, key, label, help) for the help screen; write actions marked."""
    rows = []
    for command in COMMANDS:
        if read_only and command.writes:
            continue
        rows.append((SCOPES[command.scope], key_label(command), command.label, command.help))
    return rows


class InsiteCommands(Provider):
    """The command palette: every command that applies here, every policy and backup by name."""

    def _entries(self):
        app = self.app
        screen = self.screen
        scope = getattr(screen, "SCOPE", "app")
        for command in COMMANDS:
            if not command.palette or command.scope not in (scope, "app") or command.key == "escape":
                continue
            target = screen if command.scope == scope and command.scope != "app" else app
            if target.check_action(command.action, ()) is not True:
                continue
            yield (f"{command.label} ({key_label(command)})", command.help,
                   partial(target.run_action, command.action))
        ws = getattr(app, "workspace", None)
        if ws is None:
            return
        for name in sorted(ws.config.policies):
            yield (f"Policy {name}: backups", "Show this policy's backups in the catalog",
                   partial(app.open_catalog, name))
            if not app.read_only:
                yield (f"Policy {name}: back up now", "Run a backup of this policy now",
                       partial(app.start_backup, name))

    async def discover(self) -> Hits:
        for text, help_text, callback in self._entries():
            yield DiscoveryHit(text, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, help_text, callback in self._entries():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), callback, help=help_text)
        # Backups by id, policy or source, looked up in SQLite (never the whole catalog).
        app = self.app
        ws = getattr(app, "workspace", None)
        if ws is None or len(query.strip()) < 2:
            return
        for backup in ws.catalog.backups(search=query.strip(), limit=8):
            text = f"Backup {backup['id']} · {backup['policy']} · {backup['started_at']} · {backup['status']}"
            yield Hit(0.5, text, partial(app.open_backup, backup["id"]), text=text,
                      help="Open this backup's details")
            if not app.read_only and backup["status"] == "succeeded":
                text = f"Restore backup {backup['id']} ({backup['policy']})"
                yield Hit(0.4, text, partial(app.open_restore, backup["id"]), text=text,
                          help="Open the restore wizard on this backup")
