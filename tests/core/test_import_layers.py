"""The Python package's import graph (issue 18, item 7): no import cycle anywhere in flash_attn_cy, and the front end
in layers that depend only downward.

The graph is built from the source (AST) of every module of the installed package, counting every import: at module
level and inside functions (a lazy import is still a dependency), ``from . import x`` of a submodule as an edge to
that submodule, an import of the package itself (``import flash_attn_cy``) as an edge to its ``__init__``, and
``importlib.import_module("...")`` with a constant name.
"""
from __future__ import annotations

import ast
import os

import pytest

import flash_attn_cy

PACKAGE = "flash_attn_cy"
ROOT = os.path.dirname(os.path.abspath(flash_attn_cy.__file__))

# The front end, bottom to top: a module may import modules of its own layer or below, never above.
FRONT_END = [
    ("errors", "_build_info", "_core", "_mps"),  # exceptions, build facts, the extension, the MPS shim helper
    ("_arrays",),                                # array kinds, zero-copy views, output allocation
    ("_dropout",),                               # where the dropout (seed, offset) comes from
    ("_validate", "_validate_kvcache"),          # argument validation and normalisation (the one owner)
    ("_dispatch",),                              # normalised arguments -> _core calls
    ("autograd", "_kvcache_op"),                 # torch custom ops and autograd over _dispatch
    ("interface", "kvcache", "_backward"),       # the public functions
]
# Of the front end, only these import the extension: the public layers reach it through _dispatch.
CORE_IMPORTERS = {"_mps", "_arrays", "_validate", "_dispatch"}


# Subpackages whose source lives outside the package folder in a checkout (an editable install maps them in; a
# wheel installs them in place): flash_attn_cy.sim.translate is the simulator's build tool, csrc/sim/translate.
MAPPED = {("sim", "translate"): os.path.join(os.path.dirname(ROOT), "csrc", "sim", "translate")}


def _package_dirs():
    """(folder, dotted parts relative to the package's parent) of every folder of the package's source."""
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        yield dirpath, os.path.relpath(dirpath, os.path.dirname(ROOT)).split(os.sep), filenames
    for parts, src in MAPPED.items():
        if not os.path.isdir(os.path.join(ROOT, *parts)) and os.path.isdir(src):
            for dirpath, dirnames, filenames in os.walk(src):
                dirnames[:] = [d for d in dirnames if d != "__pycache__"]
                sub = os.path.relpath(dirpath, src)
                yield dirpath, [PACKAGE, *parts] + ([] if sub == "." else sub.split(os.sep)), filenames


def _modules() -> dict:
    """Dotted name -> source path (None for compiled or generated modules without Python source here)."""
    mods = {}
    for dirpath, rel, filenames in _package_dirs():
        for f in filenames:
            stem = f.split(".")[0]
            if f.endswith(".py"):
                name = ".".join(rel if stem == "__init__" else rel + [stem])
                mods[name] = os.path.join(dirpath, f)
            elif f.endswith((".so", ".pyd", ".pyx", ".py.in")):  # the extension (built or source), _build_info.py.in
                mods.setdefault(".".join(rel + [stem]), None)
    return mods


def _targets(module: str, is_package: bool, node: ast.AST, mods: dict) -> list:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        here = module.split(".") if is_package else module.split(".")[:-1]
        base_parts = here[:len(here) - node.level + 1] if node.level else []
        base = ".".join(base_parts + ([node.module] if node.module else []))
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return [node.args[0].value]
    return []


def import_graph() -> dict:
    """Module -> the set of flash_attn_cy modules it imports (anywhere in its source)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        deps = set()
        if path is not None:
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read(), path)
            for node in ast.walk(tree):
                for target in _targets(name, path.endswith("__init__.py"), node, mods):
                    while target and target not in mods:  # `from pkg.mod import name` -> pkg.mod
                        target = target.rpartition(".")[0]
                    if target and target != name:
                        deps.add(target)
        graph[name] = deps
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_package():
    graph = import_graph()
    for name in ("interface", "kvcache", "_dispatch", "_validate", "_core", "flash_attn_compat.flash_attn_interface",
                 "sim.translate"):
        assert f"{PACKAGE}.{name}" in graph, name
    # lazy (function-level) imports count: _arrays reaches _mps only inside a function
    assert f"{PACKAGE}._mps" in graph[f"{PACKAGE}._arrays"]
    assert f"{PACKAGE}.transformers_integration" in graph[PACKAGE]


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_cycle_detection_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_front_end_layers_depend_only_downward():
    graph = import_graph()
    layer = {f"{PACKAGE}.{m}": i for i, names in enumerate(FRONT_END) for m in names}
    assert set(layer) <= set(graph), "a front-end module named here no longer exists"
    upward = [(m, d) for m in layer for d in graph[m] if d in layer and layer[d] > layer[m]]
    assert upward == []


def test_only_the_dispatch_layer_calls_the_extension():
    graph = import_graph()
    importers = {m.rpartition(".")[2] for names in FRONT_END for m in (f"{PACKAGE}.{n}" for n in names)
                 if f"{PACKAGE}._core" in graph[m]}
    assert importers <= CORE_IMPORTERS, importers - CORE_IMPORTERS


@pytest.mark.parametrize("module", ["interface", "kvcache", "_backward", "autograd", "_kvcache_op"])
def test_modules_above_the_package_do_not_import_the_package(module):
    """Submodules import submodules, never the package facade (which imports them)."""
    assert PACKAGE not in import_graph()[f"{PACKAGE}.{module}"]
