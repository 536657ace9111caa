"""helpers/ in three layers whose imports only point down, and one map of its modules.

Layers, top to bottom: ``helpers.lab`` (notebooks 07-10, scripts, benchmarks), ``helpers`` (what
notebooks 00-06 teach), ``helpers.support`` (plumbing). Every import between helpers modules is read
with ``ast``, those inside functions included; the tests fail on an import of a higher layer and on
any cycle. The package docstring (``helpers/__init__.py``) is the single map of modules, by layer.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "helpers"
LAYERS = {"helpers.support": 0, "helpers": 1, "helpers.lab": 2}  # higher imports lower, never the reverse


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    """The layer a module belongs to: its package (a package's __init__ belongs to itself)."""
    package = module if module in LAYERS else module.rpartition(".")[0]
    return package


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """Every helpers module that ``module`` imports, anywhere in the file, with the line."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from helpers.x import y` names module helpers.x.y when y is a module
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known and "." in target:
                target = target.rpartition(".")[0]  # helpers.x.attr -> helpers.x
            if target in known and target != module:
                found.append((target, node.lineno))
    return found


def graph() -> dict[str, list[tuple[str, int]]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def upward_imports(edges: dict[str, list[tuple[str, int]]]) -> list[str]:
    wrong = []
    for module, targets in edges.items():
        for target, line in targets:
            if target in LAYERS and module.startswith(target + "."):
                continue  # a module may import its own package's __init__ (nothing is defined there)
            if LAYERS[layer(target)] > LAYERS[layer(module)]:
                wrong.append(f"{module} (line {line}) imports {target}: {layer(module)} is below {layer(target)}")
    return wrong


def cycles(edges: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The import cycles (strongly connected components of more than one module, or a self-loop)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target, _ in edges.get(node, []):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_every_module_is_in_a_layer():
    assert set(map(layer, modules())) <= set(LAYERS), "helpers has a folder that is no layer"


def test_imports_point_down():
    wrong = upward_imports(graph())
    assert not wrong, "imports that point up a layer:\n  " + "\n  ".join(wrong)


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles among helpers modules:\n  " + "\n  ".join(" <-> ".join(c) for c in found)


def test_the_graph_is_read():
    """The reader sees imports at the top, inside functions and between layers (a guard for the guard)."""
    edges = graph()
    assert any(target == "helpers.support.paths" for target, _ in edges["helpers.profiles"])
    assert any(target == "helpers.training" for target, _ in edges["helpers.lab.short_runs"])
    assert any(target == "helpers.support.files" for target, _ in edges["helpers.support.paths"])


@pytest.mark.parametrize("module", sorted(m for m in modules() if m not in LAYERS))
def test_every_module_is_on_the_package_map(module):
    """helpers/__init__.py's docstring is the one list of modules: each is named there, in its layer."""
    import helpers

    doc = helpers.__doc__ or ""
    listed = re.findall(r":mod:`(helpers[\w.]*)`", doc)
    assert module in listed, f"{module} is missing from the module map in helpers/__init__.py's docstring"
    section = doc.split(f"``{layer(module)}`` - ", 1)
    assert len(section) == 2 and f":mod:`{module}`" in section[1].split("\n``helpers", 1)[0], (
        f"{module} is not listed under its layer {layer(module)} in helpers/__init__.py")


def test_the_package_map_names_no_missing_module():
    import helpers

    listed = set(re.findall(r":mod:`(helpers[\w.]*)`", helpers.__doc__ or ""))
    assert listed <= set(modules()), f"the map names modules that do not exist: {sorted(listed - set(modules()))}"
