"""The console's themes, read from `themes/*.toml` (one Textual Theme per file).

Looked up in `$INSITE_THEMES_DIR`, the `themes/` folder beside the config file, then the
project's `themes/`. Textual's own themes (including `ansi-dark` and `ansi-light`) stay
available too. Built-in copies of the three defaults keep an installed console working
without the project folder.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from textual.theme import Theme

DEFAULT = "insite-dark"
SIXTEEN_COLOURS = "insite-16"
CYCLE = ("insite-dark", "insite-light", "insite-16")

_BUILTIN = {
    "insite-dark": dict(dark=True, primary="#4EA8DE", secondary="#7F8FA6", accent="#F2A541", warning="#F2C14E",
                        error="#F25F5C", success="#5FD068", foreground="#E4E7EB", background="#12161C",
                        surface="#1A2029", panel="#232B36"),
    "insite-light": dict(dark=False, primary="#1F5F99", secondary="#5A6B7D", accent="#A35200", warning="#8A5A00",
                         error="#B3261E", success="#1E7B34", foreground="#1B1F24", background="#F7F8FA",
                         surface="#ECEFF3", panel="#DDE3EA"),
    "insite-16": dict(ansi=True, dark=True, primary="ansi_bright_cyan", secondary="ansi_white",
                            accent="ansi_bright_yellow", warning="ansi_bright_yellow", error="ansi_bright_red",
                            success="ansi_bright_green", foreground="ansi_default", background="ansi_default",
                            surface="ansi_default", panel="ansi_default", boost="ansi_default",
                            variables={"block-cursor-foreground": "ansi_black",
                                       "block-cursor-background": "ansi_bright_white"}),
}


def theme_dirs(config_dir: Path | None = None) -> list[Path]:
    dirs = []
    if os.environ.get("INSITE_THEMES_DIR"):
        dirs.append(Path(os.environ["INSITE_THEMES_DIR"]))
    if config_dir is not None:
        dirs.append(config_dir / "themes")
    dirs.append(Path(__file__).resolve().parents[2] / "themes")
    return dirs


def load_themes(config_dir: Path | None = None) -> dict[str, Theme]:
    themes = {name: Theme(name=name, **settings) for name, settings in _BUILTIN.items()}
    for folder in reversed(theme_dirs(config_dir)):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            try:
                data = tomllib.loads(path.read_text())
                name = data.pop("name", path.stem)
                themes[name] = Theme(name=name, **data)
            except (OSError, ValueError, TypeError):
                continue  # a broken theme file must not stop the console; the defaults remain
    return themes


def default_theme(environ: dict[str, str] | None = None) -> str:
    """Without a configured theme: 16 colours when the terminal (or NO_COLOR) asks for it.

    TERM is read, never changed."""
    environ = os.environ if environ is None else environ
    if "NO_COLOR" in environ:
        return SIXTEEN_COLOURS
    term = environ.get("TERM", "")
    colorterm = environ.get("COLORTERM", "")
    if colorterm in ("truecolor", "24bit") or "256" in term or "direct" in term:
        return DEFAULT
    if term in ("linux", "vt100", "vt220", "xterm", "screen", "tmux", "ansi", "rxvt", "cons25", "dumb"):
        return SIXTEEN_COLOURS
    return DEFAULT
