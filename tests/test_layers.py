"""The package's layering: every module imports only its own layer or the layers below it.

Lowest first (docs/design.md, "Layers"):

    foundation → data → models → checkpoint → cost → structure → finetune/train → device → compression
    → export/report/quantize/edge/litert → api/env → baselines/launchers → cli

Read from the code, not wished for: `cost` (shapes → params, MACs, bytes, latency, and the cost registry) is
below `structure`, whose accounting builds on `deepiot.cost.types`; `finetune` is below `compression`, whose
loop fine-tunes the sliced model; `device` (profiles, the `latency` cost) is below `compression`, which
prices structures by it, and imports nothing of the search. Every import counts, at module level or deferred
inside a function (a deferred upward import is still a dependency); only `if TYPE_CHECKING:` imports are
annotations and do not. The imports that still go upward are listed in KNOWN_EXCEPTIONS with their reason;
one that disappears must be removed from the list (the test says so).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import deepiot

PACKAGE = Path(deepiot.__file__).parent

# Lowest first; the units of one layer may import each other (tests/test_imports.py forbids cycles).
LAYERS: list[set[str]] = [
    {
        "deepiot",
        "errors",
        "utils",
        "runtime",
        "checks",
    },  # the package root (version, gym registration), helpers
    {"data"},
    {"models"},
    {"checkpoint"},  # rebuilds models from their config
    {"cost"},
    {"structure"},
    {"finetune", "train"},
    {"device"},
    {"compression"},
    {"export", "report", "quantize", "edge", "litert"},
    {"api", "env"},
    {"baselines", "launchers"},  # launchers: the Ray workers' setup hook (hydra launcher configs name it)
    {"cli"},
]
LAYER_OF = {unit: index for index, layer in enumerate(LAYERS) for unit in layer}

# (importing module, imported module): why the upward import is there.
KNOWN_EXCEPTIONS = {
    (
        "deepiot",
        "deepiot.api",
    ): "`deepiot.compress` is a lazy accessor of the package root (PEP 562 __getattr__)",
}


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name), as in tests/test_imports.py."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def unit_of(module: str) -> str:
    """The layer unit of a module: "deepiot" for the root, else the first component under it."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every package module `path` imports, at any depth (functions too), except under `if TYPE_CHECKING:`."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {name for name in found if name == "deepiot" or name.startswith("deepiot.")}


def upward_imports() -> dict[tuple[str, str], str]:
    modules = module_names()
    upward = {}
    for name, path in modules.items():
        for imported in imports_of(path, modules):
            if LAYER_OF[unit_of(imported)] > LAYER_OF[unit_of(name)]:
                upward[(name, imported)] = f"{unit_of(name)} imports {unit_of(imported)}, a layer above it"
    return upward


def test_every_unit_of_the_package_has_a_layer():
    units = {unit_of(name) for name in module_names()}
    assert units - set(LAYER_OF) == set(), "give the new part of the package a layer in LAYERS"
    assert set(LAYER_OF) - units == set(), "LAYERS names a part the package no longer has"


def test_imports_are_read_including_deferred_ones_and_not_type_checking_ones():
    modules = module_names()
    budget = imports_of(modules["deepiot.compression.budget"], modules)
    assert {"deepiot.cost.registry", "deepiot.device.cost", "deepiot.structure"} <= budget
    assert "deepiot.api" in imports_of(modules["deepiot"], modules)  # deferred, inside __getattr__
    assert "deepiot.structure" not in imports_of(
        modules["deepiot.compression.reward"], modules
    )  # TYPE_CHECKING


def test_no_module_imports_a_layer_above_its_own():
    upward = upward_imports()
    unexpected = {pair: why for pair, why in upward.items() if pair not in KNOWN_EXCEPTIONS}
    assert unexpected == {}, "an import goes up the layers (see the module docstring)"


def test_every_known_exception_is_still_there():
    gone = set(KNOWN_EXCEPTIONS) - set(upward_imports())
    assert gone == set(), f"fixed, so remove from KNOWN_EXCEPTIONS: {sorted(gone)}"


def test_the_cost_registry_sits_below_the_search_and_the_device():
    modules = module_names()
    registry = imports_of(modules["deepiot.cost.registry"], modules)
    assert {unit_of(name) for name in registry} <= {"cost"}
    for module in ("deepiot.device.cost", "deepiot.compression.reward", "deepiot.compression.budget"):
        assert "deepiot.cost.registry" in imports_of(modules[module], modules)
    device = {
        imported
        for name in modules
        if unit_of(name) == "device"
        for imported in imports_of(modules[name], modules)
    }
    assert not any(unit_of(name) == "compression" for name in device)


def test_only_the_cli_composes_hydra_configs():
    """Composing the configs (hydra.compose, initialize_config_dir, @hydra.main) is the command line's glue: it
    lives in deepiot.cli, and the packages below get settings, models and data from it."""
    composing = {"compose", "initialize", "initialize_config_dir", "initialize_config_module", "main"}
    found = set()
    for name, path in module_names().items():
        for node in ast.walk(ast.parse(path.read_text())):
            imported = isinstance(node, ast.ImportFrom) and node.module == "hydra"
            if imported and any(alias.name in composing for alias in node.names):
                found.add(name)
            attribute = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            if attribute and node.value.id == "hydra" and node.attr in composing:
                found.add(name)
    assert {"deepiot.cli", "deepiot.cli.baseline", "deepiot.cli.compress"} <= found
    assert {name for name in found if unit_of(name) != "cli"} == set()


def test_the_readme_layout_names_every_unit_in_layer_order():
    """README's "Layout" list names each unit (`deepiot/<unit>/` or `deepiot/<unit>.py`) of the package in the
    order of LAYERS, lowest first, so a reader learns the architecture from it and it cannot drift."""
    readme = (PACKAGE.parent / "README.md").read_text()
    start = readme.index("Layout, the package's layers lowest first")
    layout = readme[start : readme.index("Beside the package:", start)]
    named = [match.group(1) for match in re.finditer(r"`deepiot/(\w+)(?:/|\.py)", layout)]
    units = {unit for layer in LAYERS for unit in layer} - {"deepiot"}
    assert units - set(named) == set(), "units the README's layout leaves out"
    assert set(named) - units - {"__init__"} == set(), "units the README names that LAYERS does not know"
    layers = [LAYER_OF[unit] for unit in named if unit in LAYER_OF]
    assert layers == sorted(layers), f"the README lists units out of layer order: {named}"
    on_disk = {
        path.stem for path in PACKAGE.iterdir() if path.suffix == ".py" or (path / "__init__.py").exists()
    }
    assert on_disk - {"__init__"} <= units, "a unit on disk that LAYERS does not place"
