"""The engine stays free of Textual (as Harlequin checks): every module outside
`insite_console/tui/` is imported in a fresh interpreter and `textual` must not be loaded,
so the CLI, cron runs and the scheduler start fast and never depend on the console."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import insite_console


def engine_modules() -> list[str]:
    names = ["insite_console"]
    for info in pkgutil.walk_packages(insite_console.__path__, "insite_console."):
        if info.name == "insite_console.tui" or info.name.startswith("insite_console.tui."):
            continue
        if info.name == "insite_console.__main__":
            continue  # runs the CLI when imported
        names.append(info.name)
    return names


@pytest.mark.parametrize("module", engine_modules())
def test_module_does_not_import_textual(module):
    code = (f"import sys, {module}\n"
            "loaded = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.'))\n"
            "print(','.join(loaded))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{module} imports textual: {result.stdout.strip()}"


def test_cli_parser_does_not_import_textual():
    code = ("import sys\nfrom insite_console import cli\ncli.build_parser()\n"
            "print('textual' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_the_console_package_is_the_only_textual_user():
    """A cheap static check too: no engine source file mentions a Textual import."""
    import pathlib

    root = pathlib.Path(insite_console.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if "tui" in path.relative_to(root).parts:
            continue
        text = path.read_text()
        if "import textual" in text or "from textual" in text:
            offenders.append(str(path.relative_to(root)))
    assert offenders == []


def test_the_console_starts_without_the_cloud_sdks():
    """Start-up time: opening the console must not import boto3, google-cloud or azure."""
    code = ("import sys\nfrom insite_console.tui.app import InsiteApp\n"
            "from insite_console.tui.screens import dashboard, catalog, jobs, restore, detail, help\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 'google', 'azure'))\n"
            "print(','.join(heavy))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
