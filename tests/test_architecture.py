"""The layout is the pipeline: data flows downward, nothing imports upward or in a circle, and the
library never imports streamlit (checked on every module, imported for real)."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "diet_explore"
# Lower layers never import higher ones; a layer may import anything below it and itself.
LAYERS = {
    "core": 0,
    "plots": 0,
    "models": 1,
    "tasks": 1,
    "profiling": 2,
    "masking": 3,
    "pruning": 4,
    "evaluation": 4,
    "experiments": 5,
    "cli": 6,
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every diet_explore module ``path`` imports, at module level or inside functions (not the
    ``if TYPE_CHECKING:`` imports that only annotations read)."""
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for stmt in block.body
        for n in ast.walk(stmt)
    }  # annotations only: never run
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("diet_explore")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("diet_explore") and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module`
    return found


def library_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in LIB.rglob("*.py")}
    return {m: {i for i in imports_of(p) if i in modules and i != m} for m, p in modules.items()}


def layer(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return None  # the package root (__version__ only) and `python -m diet_explore`, which only calls the CLI
    return parts[1]


@pytest.mark.slow
def test_every_library_module_belongs_to_a_layer():
    unknown = {m for m in library_graph() if layer(m) is not None and layer(m) not in LAYERS}
    assert not unknown, (
        f"modules outside the known layers: {sorted(unknown)} (add the layer to LAYERS and the map in docs/architecture.md)"
    )


def test_data_flows_downward():
    upward = []
    for module, deps in library_graph().items():
        for dep in deps:
            a, b = layer(module), layer(dep)
            if a is None or b is None or a == b:
                continue
            if LAYERS[b] >= LAYERS[a]:
                upward.append(f"{module} -> {dep}")
    assert not upward, "imports that do not flow downward:\n" + "\n".join(sorted(upward))


def test_no_import_circles():
    graph = library_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d) :] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


@pytest.mark.slow
def test_no_library_module_imports_streamlit():
    """Import every module of the library in a fresh interpreter and look at sys.modules."""
    code = (
        "import importlib, pkgutil, sys, diet_explore\n"
        "names = [m.name for m in pkgutil.walk_packages(diet_explore.__path__, 'diet_explore.')]\n"
        "for n in names: n.endswith('__main__') or importlib.import_module(n)\n"
        "bad = sorted(m for m in sys.modules if m == 'streamlit' or m.startswith('streamlit.'))\n"
        "print(len(names), 'modules;', 'streamlit imported' if bad else 'no streamlit')\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert int(proc.stdout.split()[0]) >= len(list(LIB.rglob("*.py"))) - 1  # every module was imported


def test_every_app_chart_is_drawn_through_widgets_chart():
    """One rule for how the app draws a plotly figure (widgets.chart: no Streamlit theme, so an update
    that changes nothing draws nothing); a page calling st.plotly_chart itself would bypass it."""
    app = ROOT / "diet_explore_app"
    calls = {
        f"{path.relative_to(ROOT)}:{n}"
        for path in app.rglob("*.py")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if ".plotly_chart(" in line
    }
    assert len(calls) == 1 and next(iter(calls)).startswith("diet_explore_app/widgets.py:"), sorted(calls)


def test_the_wheel_lists_every_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set(find_packages(str(ROOT), include=["diet_explore", "diet_explore.*", "diet_explore_app"]))
    assert found | {"diet_explore_caches"} == listed
