"""Glob patterns for excludes and restore includes: `*`, `?`, `[...]` and `**` across directories.

A pattern without a '/' matches a name at any depth ("*.tmp"); one with a '/' matches the
whole path from the root ("/opt/app/config/**"); a pattern that matches a directory also
matches everything below it.
"""

from __future__ import annotations

import re
from functools import lru_cache


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(char))
            else:
                body = pattern[i + 1:end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out) + "(?:/.*)?", re.DOTALL)


def matches(pattern: str, path: str) -> bool:
    """Does `pattern` select `path` (an absolute '/'-separated path)?"""
    if "/" not in pattern.rstrip("/"):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        return any(_compile(pattern).fullmatch(part) for part in path.strip("/").split("/")) or \
            bool(_compile(pattern).fullmatch(name))
    if not pattern.startswith("/") and not pattern.startswith("**"):
        pattern = "**/" + pattern
    return bool(_compile(pattern).fullmatch(path))


def any_match(patterns: list[str], path: str) -> bool:
    return any(matches(p, path) for p in patterns)


def could_match_below(pattern: str, directory: str) -> bool:
    """Could `pattern` select something inside `directory`? (restore includes keep parent dirs)."""
    if "/" not in pattern.rstrip("/") or pattern.startswith("**"):
        return True
    prefix = pattern.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]
    directory = directory.rstrip("/") + "/"
    return prefix.startswith(directory) or directory.startswith(prefix)
