"""What every screen shares: the header and footer, and the per-command action check."""

from __future__ import annotations

from textual.screen import Screen

from insite_console.tui import commands


class InsiteScreen(Screen):
    SCOPE = "app"

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if not commands.allowed(self.app, self.SCOPE, action):
            return False  # hidden: read-only mode
        return self.can_run(action)

    def can_run(self, action: str) -> bool | None:
        """True to allow, None to show the key dimmed (does not apply right now)."""
        return True

    def refresh_bindings_if_changed(self, *actions: str) -> None:
        """Re-render the footer only when what these actions allow has changed: a footer
        refresh re-mounts its keys, far too costly on every cursor move or progress tick."""
        state = tuple(self.check_action(action, ()) for action in actions)
        if state != getattr(self, "_binding_state", None):
            self._binding_state = state
            self.refresh_bindings()

    def refresh_on_jobs_change(self, refresh, every: float = 0.25) -> None:
        """Call `refresh` when the app's jobs change, at most once per `every` seconds and only
        while this screen shows: job progress arrives ~10 times a second per job."""
        dirty = [False]

        def mark(_value) -> None:
            dirty[0] = True

        def tick() -> None:
            if dirty[0] and self.is_active:
                dirty[0] = False
                refresh()

        self.watch(self.app, "jobs_version", mark, init=False)
        self.set_interval(every, tick, name=f"{type(self).__name__}-jobs")

    def selected_policy(self) -> str | None:
        return None

    def action_back(self) -> None:
        self.app.switch_mode("dashboard")
