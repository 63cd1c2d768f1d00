"""plugin/core must run without Qt or QGIS (worker process, GPU server)."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_core_imports_no_qt_or_qgis():
    import plugin.core as core

    modules = sorted(
        m.name for m in pkgutil.walk_packages(core.__path__, prefix="plugin.core.") if not m.name.endswith("__main__")
    )
    assert "plugin.core.types" in modules
    code = (
        "import importlib, sys\n"
        f"mods = {modules!r}\n"
        "for m in mods: importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('qgis', 'PyQt5', 'PyQt6', 'sip'))\n"
        "print('BAD', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def _core_import_graph(folder: str = "plugin/core") -> dict[str, set[str]]:
    """Module -> modules of `folder` it imports (top-level, lazy and TYPE_CHECKING imports alike)."""
    import ast

    core = ROOT / folder
    names = {}
    for f in core.rglob("*.py"):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        names[".".join(parts)] = (f, is_pkg)
    graph: dict[str, set[str]] = {}
    for mod, (f, is_pkg) in names.items():
        package = mod if is_pkg else mod.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")
                if node.level:
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    for cand in (f"{target}.{alias.name}", target):
                        if cand in names and cand != mod:
                            deps.add(cand)
                            break
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in names and a.name != mod)
        graph[mod] = deps
    return graph


@pytest.mark.parametrize("folder", ["plugin/core", "plugin"])
def test_no_import_circle(folder):
    """Arrows point one way: no module imports (even lazily) one that imports it back -- in the
    engine, and across the whole plugin (gui, tasks, qgis_io, processing)."""
    graph = _core_import_graph(folder)
    assert "plugin.core.store.store" in graph and "plugin.core.search.search" in graph["plugin.core.store.store"]
    assert folder == "plugin/core" or "plugin.processing.common" in graph["plugin.processing.search_index"]
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    # A package importing its own submodules (re-exports) is not a circle unless one imports it back.
    cycles = [c for c in cycles if not all(x.startswith(c[0] + ".") or x == c[0] for x in c[1:-1])]
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)
