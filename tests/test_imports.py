"""The package's import graph has no cycle, and ``sta_search.tiny`` is a leaf.

Every ``import sta_search...`` / ``from sta_search... import`` / ``from .x import`` statement of every module
is an edge, wherever it sits: at the top of the module or inside a function (a function-level import runs
whenever the function does, so a cycle through one still means two modules that need each other). Importing
``a.b.c`` also runs the ``__init__`` of ``a.b``, so the edge goes to those packages too (except packages the
importer sits in: they are already being imported). One kind of statement is left out, precisely: imports
inside a module-level ``def __getattr__`` (PEP 562). Such a hook runs only when someone reads an attribute the
module does not define (``sta_search.accelerate``, ``sta_search.tiny.TinyVideoPipeline``); counting its
imports would make every ``from . import __version__`` look like an import of the whole library.

Dynamic imports count as well: a string constant that names a module of the package (``"sta_search.tiny"``,
or ``"sta_search.tiny:bundled_path"`` as in the bundled-model table of ``models/loading.py``) is an edge.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = "sta_search"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _statements(tree: ast.Module):
    """Import statements, skipping the bodies of a module-level ``__getattr__`` (see the module docstring)."""
    skip = {id(node) for top in tree.body if isinstance(top, ast.FunctionDef) and top.name == "__getattr__"
            for node in ast.walk(top)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
            yield node


_DYNAMIC = re.compile(rf"{PACKAGE}(\.\w+)*(:\w+)?")


def _dynamic_targets(tree: ast.Module, modules) -> set[str]:
    """Modules named by string constants (``importlib.import_module`` tables): ``"pkg.mod"`` or ``"pkg.mod:attr"``."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _DYNAMIC.fullmatch(node.value):
            name = node.value.split(":")[0]
            if name in modules:
                found.add(name)
    return found


def _targets(module: str, path: Path, node, modules) -> set[str]:
    """Modules of the package that `node` (an import statement in `module`) imports."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
        return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}
    if node.level:
        base = module.split(".") if _is_package(path) else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
        if not (target == PACKAGE or target.startswith(PACKAGE + ".")):
            return set()
    found = {target}
    for alias in node.names:  # `from pkg import submodule`
        if f"{target}.{alias.name}" in modules:
            found.add(f"{target}.{alias.name}")
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        own_packages = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        if _is_package(path):
            own_packages.add(module)
        targets = set(_dynamic_targets(tree, modules))
        for node in _statements(tree):
            targets |= _targets(module, path, node, modules)
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # the target and the packages it sits in
                name = ".".join(parts[:i])
                if name in modules and name not in own_packages and name != module:
                    graph[module].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_cycles():
    """The checker can fail: a two-module and a three-module cycle are found, a chain is not."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_graph_sees_relative_function_level_package_and_dynamic_imports():
    """Edges come from `from .x`, `from .. import y`, function-level imports and the packages a target sits in."""
    graph = import_graph()
    assert "sta_search.errors" in graph["sta_search.options"]  # top level, `from .errors import`
    assert "sta_search.profile" in graph["sta_search.distributed"]  # inside a function
    assert "sta_search.options" in graph["sta_search.commands.profile"]  # `from .. import options`
    assert "sta_search.models" in graph["sta_search.profile"]  # `from .models import ...` runs models/__init__
    assert "sta_search.accelerate" not in graph["sta_search"]  # PEP 562 __getattr__ hook, see the docstring
    assert "sta_search.tiny" in graph["sta_search.models.loading"]  # "sta_search.tiny:bundled_path" in a table


def test_no_import_cycle_in_the_package():
    found = cycles(import_graph())
    assert not found, "import cycles (modules that import each other, directly or through others): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_tiny_is_a_leaf():
    """The bundled model imports nothing from sta_search except errors (models/loading finds it by name)."""
    graph = import_graph()
    outside = {(module, target) for module, targets in graph.items() if module.startswith("sta_search.tiny")
               for target in targets if not target.startswith("sta_search.tiny") and target != "sta_search.errors"}
    assert not outside, sorted(outside)


@pytest.mark.parametrize("module", ["sta_search.distributed", "sta_search.options", "sta_search.report",
                                    "sta_search.cli"])
def test_light_modules_import_no_torch(module):
    """The CLI's parsing and error paths stay fast: these modules import neither torch nor diffusers."""
    import subprocess
    import sys

    code = (f"import sys, {module}; heavy = [m for m in ('torch', 'diffusers', 'numpy') if m in sys.modules]; "
            "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{module} imports {result.stdout.strip()}"
