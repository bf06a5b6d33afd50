"""Backup sources, one module per type; database modules are imported only when used."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from insite_console.sources.base import Source

_MODULES = {"files": ("insite_console.sources.files", "FilesSource"),
            "postgresql": ("insite_console.sources.postgresql", "PostgresSource"),
            "redis": ("insite_console.sources.redis", "RedisSource")}


def source_module(kind: str) -> ModuleType:
    return importlib.import_module(_MODULES[kind][0])


def make_source(name: str, settings: dict[str, Any]) -> Source:
    module_name, class_name = _MODULES[settings["type"]]
    return getattr(importlib.import_module(module_name), class_name)(name, settings)
