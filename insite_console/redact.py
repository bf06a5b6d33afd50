"""Secrets out of text shown or stored: passwords in URLs (`redis://user:pw@host`,
`postgresql://u:pw@host/db`) and libpq `password=` settings become `***`.

Targets and errors are printed, put in JSON and kept in the catalog's restores and events;
the password a user typed into a target URL must end up in none of them."""

from __future__ import annotations

import re
from typing import Any

_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@'\"]*):[^\s/'\"]*@")  # to the last @, as urlsplit
_KEY_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&'\"]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every URL password and `password=` value replaced by `***`."""
    if "@" not in text and "=" not in text:
        return text
    return _KEY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", text))


def redact_all(value: Any) -> Any:
    """redact() on every string in nested dicts / lists (a result before it is shown or stored)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_all(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_all(item) for item in value]
    return value
