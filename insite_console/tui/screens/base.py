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

    def selected_policy(self) -> str | None:
        return None

    def action_back(self) -> None:
        self.app.switch_mode("dashboard")
