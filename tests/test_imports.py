"""The package's import graph: no cycle between modules, and every module imports on its own."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import deepiot

PACKAGE = Path(deepiot.__file__).parent


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name), e.g. "deepiot.structure.rules"."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def module_level_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `path` imports when it is imported (module-level statements only: imports inside
    functions and `if TYPE_CHECKING:` blocks are deferred). `from pkg import sub` depends on the submodule."""
    imported = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                imported.add(submodule if submodule in modules else node.module)
    return imported & set(modules)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), i.e. the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in graph[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return found


def test_cycles_finds_a_cycle_between_two_modules():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_modules():
    modules = module_names()
    graph = {name: module_level_imports(path, modules) - {name} for name, path in modules.items()}
    assert "deepiot.structure.rules" in graph["deepiot.structure.graph"]  # the graph is read, not empty
    assert cycles(graph) == []


def test_every_module_imports_alone_in_a_fresh_interpreter():
    """Each module imported first (the other deepiot modules dropped from sys.modules before each one)."""
    script = (
        "import importlib, json, sys\n"
        "failed = {}\n"
        f"for name in {sorted(module_names())!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'deepiot' or m.startswith('deepiot.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as error:\n"
        "        failed[name] = f'{type(error).__name__}: {error}'\n"
        "print(json.dumps(failed))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {}
