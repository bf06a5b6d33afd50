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


def _import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere (top level, inside functions, under
    TYPE_CHECKING): a deferred import is still a dependency, only hidden."""
    import ast
    import pathlib

    root = pathlib.Path(insite_console.__file__).parent
    files = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                deps.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names)
        graph[module] = {d for d in deps if d in files and d != module}
    return graph


def test_no_import_cycles():
    """One module a concept, dependencies one way: a cycle (even through a deferred import)
    means two modules are one concept or a shared piece wants a module of its own."""
    graph = _import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for dep in sorted(graph[module]):
            if dep not in index:
                visit(dep)
                low[module] = min(low[module], low[dep])
            elif dep in stack:
                low[module] = min(low[module], index[dep])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert len(graph) > 50 and any(graph.values())  # the graph was really read
    assert cycles == []
