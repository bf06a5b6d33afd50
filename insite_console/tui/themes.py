"""The console's themes, read from `themes/*.toml` (one Textual Theme per file).

Looked up in `$INSITE_THEMES_DIR`, the `themes/` folder beside the config file, then the
project's `themes/` (linked into the package as `tui/themes`, so an installed console has
them too). Textual's own themes (including `ansi-dark` and `ansi-light`) stay available.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from textual.theme import Theme

DEFAULT = "insite-dark"
SIXTEEN_COLOURS = "insite-16"
CYCLE = ("insite-dark", "insite-light", "insite-16")

def theme_dirs(config_dir: Path | None = None) -> list[Path]:
    dirs = []
    if os.environ.get("INSITE_THEMES_DIR"):
        dirs.append(Path(os.environ["INSITE_THEMES_DIR"]))
    if config_dir is not None:
        dirs.append(config_dir / "themes")
    dirs.append(Path(__file__).parent / "themes")  # the project's themes/, linked into the package
    return dirs


def load_themes(config_dir: Path | None = None) -> dict[str, Theme]:
    themes: dict[str, Theme] = {}
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
