"""Theme colours as Rich styles, for cells built in Python (tables)."""

from __future__ import annotations

from rich.style import Style
from textual.color import Color


def role_style(app, role: str) -> Style:
    value = app.theme_variables.get(role)
    if not value:
        return Style()
    try:
        return Style(color=Color.parse(value).rich_color)
    except Exception:
        return Style()
