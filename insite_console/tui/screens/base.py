"""What every screen shares: the header and footer, and the per-command action check."""

from __future__ import annotations

from textual.screen import Screen

from insite_console.tui import commands


def selected_key(table) -> str | None:
    """The row key under a DataTable's cursor, or None when the table is empty."""
    if not table.row_count:
        return None
    try:
        return table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
    except Exception:
        return None


class InsiteScreen(Screen):
    SCOPE = "app"

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if not commands.allowed(self.app, self.SCOPE, action):
            return False  # hidden: read-only mode
        return self.can_run(action)

    def on_key(self, event) -> None:
        """Read-only mode: a refused key (one no field took) says why nothing happens."""
        if not getattr(self.app, "read_only", False):
            return
        for scope, bindings in ((self.SCOPE, self._bindings), ("app", self.app._bindings)):
            for binding in bindings.key_to_bindings.get(event.key, []):
                if not commands.allowed(self.app, scope, binding.action):
                    self.notify(f"read-only mode: {binding.description or binding.action} is not available",
                                severity="warning", timeout=3)
                    event.stop()
                    return

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
