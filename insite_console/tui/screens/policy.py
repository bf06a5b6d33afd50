"""One policy's trends, where an operator would rather look than read: the age of its newest
restore point against the RPO over the last day, and the size and duration of its last backups."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.markup import escape
from textual.widgets import Header, Sparkline, Static

from insite_console import clock
from insite_console.tui import commands, model
from insite_console.tui.screens.base import InsiteScreen
from insite_console.tui.widgets.footer import InsiteFooter

RUNS = 30


class PolicyScreen(InsiteScreen):
    SCOPE = "policy"
    BINDINGS = commands.bindings("policy")

    def __init__(self, policy: str) -> None:
        super().__init__()
        self.policy = policy

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        with VerticalScroll(id="policy"):
            yield Static(id="policy-head")
            yield Static(id="rpo-title", classes="plot-title")
            yield Sparkline([], id="rpo-plot", classes="plot")
            yield Static(id="rpo-axis", classes="plot-axis")
            yield Static(id="size-title", classes="plot-title")
            yield Sparkline([], id="size-plot", classes="plot")
            yield Static(id="duration-title", classes="plot-title")
            yield Sparkline([], id="duration-plot", classes="plot")
            yield Static(id="runs-axis", classes="plot-axis")
        yield InsiteFooter()

    def on_mount(self) -> None:
        self.watch(self.app, "catalog_version", lambda _: self.refresh_plots() if self.is_active else None,
                   init=False)
        self.refresh_plots()

    def refresh_plots(self) -> None:
        ws = self.app.workspace
        settings = ws.config.policies[self.policy]
        series = model.rpo_age_series(ws, self.policy)
        rpo = series["rpo_seconds"]
        self.query_one("#policy-head", Static).update(
            f"[b]Policy {escape(self.policy)}[/] · source {escape(settings['source'])} · storage "
            f"{escape(settings['storage'])} · RPO {clock.human_duration(rpo) if rpo else 'none'}"
            f" · schedule {escape(settings.get('schedule') or 'none')}")
        ages = series["ages"]
        # the plot is capped at twice the RPO (a breach reads as a wall, not as a scale change);
        # a moment with no restore point yet is drawn at the cap
        cap = (rpo or 0) * 2 or max((a for a in ages if a is not None), default=1.0) or 1.0
        self.query_one("#rpo-plot", Sparkline).data = [cap if a is None else min(a, cap) for a in ages]
        now_age = ages[-1]
        words = [f"now {clock.human_duration(now_age)}" if now_age is not None else "no restore point now"]
        if series["max_age"] is not None:
            words.append(f"worst {clock.human_duration(series['max_age'])}")
        if rpo:
            over = series["over_rpo"]
            mark = "[$success]✓ within the RPO all day[/]" if not over else (
                f"[$error]✗ over the RPO for about {clock.human_duration(over * series['step_seconds'])}[/]")
            words.append(mark)
        if series["unknown"]:
            words.append(f"no restore point for the first {series['unknown']} of {len(ages)} samples")
        self.query_one("#rpo-title", Static).update(
            "[b]Age of the newest restore point[/], last 24 h"
            + (f" (top of the plot: 2 × RPO = {clock.human_duration(cap)})" if rpo else "") + ": " + " · ".join(words))
        self.query_one("#rpo-axis", Static).update("[dim]−24 h" + " " * 20 + "→" + " " * 20 + "now[/]")
        runs = model.run_series(ws, self.policy, RUNS)
        self.query_one("#size-plot", Sparkline).data = [r["bytes_stored"] for r in runs]
        self.query_one("#duration-plot", Sparkline).data = [r["seconds"] or 0 for r in runs]
        if runs:
            stored = [r["bytes_stored"] for r in runs]
            seconds = [r["seconds"] for r in runs if r["seconds"] is not None]
            self.query_one("#size-title", Static).update(
                f"[b]Stored per backup[/], last {len(runs)}: {model.size_text(min(stored))} … "
                f"{model.size_text(max(stored))}, newest {model.size_text(stored[-1])}")
            self.query_one("#duration-title", Static).update(
                "[b]Duration per backup[/]: " + (f"{clock.human_duration(min(seconds))} … "
                                                 f"{clock.human_duration(max(seconds))}, newest "
                                                 f"{clock.human_duration(seconds[-1])}" if seconds else "unknown"))
            self.query_one("#runs-axis", Static).update(f"[dim]oldest of the {len(runs)} → newest[/]")
        else:
            self.query_one("#size-title", Static).update("[b]Stored per backup[/]: no succeeded backup yet")
            self.query_one("#duration-title", Static).update("[b]Duration per backup[/]: no succeeded backup yet")
            self.query_one("#runs-axis", Static).update("")

    def action_back(self) -> None:
        self.app.pop_screen()
