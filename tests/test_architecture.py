"""The layout keeps its promises: imports flow one way, modules stay small, one module builds MQTT clients.

Read with `ast`, not by importing, so a violation is found even in code no other test runs.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("firmware_models", "devices", "broker", "federation", "registry", "tinyfleet")
# Who may import whom (besides itself). `tinyfleet` is the composition root: nothing imports it.
ALLOWED: dict[str, set[str]] = {
    "firmware_models": set(),
    "devices": {"firmware_models"},
    "broker": {"devices", "firmware_models"},
    "federation": {"broker", "devices", "firmware_models"},
    "registry": {"broker", "devices", "firmware_models"},
    "tinyfleet": {"federation", "registry", "broker", "devices", "firmware_models"},
}
MAX_LINES = 500


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in `path` (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_flow_one_way(path: Path) -> None:
    pkg = path.relative_to(ROOT).parts[0]
    wrong = sorted(n for n in _imports(path)
                   if n.split(".")[0] in PACKAGES and n.split(".")[0] not in ALLOWED[pkg] | {pkg})
    assert not wrong, f"{path.relative_to(ROOT)} ({pkg}) imports {wrong}; allowed: {sorted(ALLOWED[pkg])}"


def test_no_import_circle_between_modules() -> None:
    known = {_module_name(p): p for p in _modules()}
    graph = {m: {n for n in _imports(p) if n in known and n != m} for m, p in known.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_library_module_over_500_lines() -> None:
    big = {str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_one_module_constructs_paho_clients() -> None:
    builders = sorted(str(p.relative_to(ROOT)) for p in _modules()
                      if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "Client"
                             and isinstance(n.func.value, ast.Name) and n.func.value.id == "mqtt"
                             for n in ast.walk(ast.parse(p.read_text()))))
    assert builders == ["devices/link/client.py"], builders


def test_nothing_behaves_differently_when_ci_is_set() -> None:
    """A newcomer's `make test` runs the same tests as CI: no code or test reads the CI variable."""
    pattern = re.compile(r"""environ(\.get)?\s*[\[(]\s*["']CI["']|getenv\(\s*["']CI["']""")
    sources = [p for d in (*PACKAGES, "tests", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    readers = [str(p.relative_to(ROOT)) for p in sources if pattern.search(p.read_text(encoding="utf-8"))]
    assert readers == []
