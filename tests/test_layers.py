"""docs/ARCHITECTURE.md's import rules, checked on the source: layers import downwards, no cycles.

Every import counts, wherever it stands: at module level, inside a function or method, in a
nested block, and under ``if TYPE_CHECKING:`` (a type named from above ties the lower module to
the upper one as much as a call does: move the type down or name it with a ``typing.Protocol``).
A lazy import (torch.distributed, matplotlib, MindSpore's protobuf) is fine when it goes down the
layering and closes no cycle. The one upward import is the facade's lazy load of the harness
(``ALLOWED_UPWARD``).
"""

from __future__ import annotations

import ast
import pathlib

import torchresume

ROOT = pathlib.Path(torchresume.__file__).parent
# The layer order, bottom to top: a package (or top-level module) may import only ranks at or below
# its own. Inside a rank, modules import each other freely (but never in a cycle).
RANK = {
    "storage": 0,                                  # bytes at a path or URL
    "format": 1, "state": 1,                       # file formats; what a state tree is
    "files": 2,                                    # one checkpoint (file, directory, sharded) in and out
    "catalog": 3, "retention": 3, "run_lock": 3,   # the engine: a directory of checkpoints, ...
    "inspection": 3, "transfer": 3, "signals": 3,
    "staging": 3, "snapshot": 3, "naming": 3, "save_slot": 3,
    "world": 3, "distributed": 3,                  # ... and the torch.distributed runtime
    "manager": 4, "sharded_layout": 4,             # the manager and its layouts
    "api": 4, "data": 4, "": 4,                    # the facade (torchresume/__init__), datasets
    "train": 5,                                    # the Model harness
    "integrations": 6, "app": 6,                   # Lightning, HF Trainer; the demo app
    "cli": 7, "__main__": 8,
}
LEAVES = {"errors", "log", "async_writer", "openmp"}  # used from every layer, import nothing above them
# The imports that go up a layer on purpose: the facade's harness names (Model, ModelCheckpoint, ...),
# loaded through importlib on first use (``__getattr__`` + ``_HARNESS``), so ``import torchresume``
# stays core-only. Each is lazy and closes no cycle (checked below).
ALLOWED_UPWARD = {
    ("torchresume", "torchresume.train"),
    ("torchresume", "torchresume.train.exception_save"),
}


def _module_name(path: pathlib.Path) -> str:
    parts = ["torchresume", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, module: str, modules: set[str], source: str | None = None) -> set[str]:
    """Every torchresume module ``module`` imports, wherever the import stands (``ast.walk``: function
    bodies and ``if TYPE_CHECKING:`` blocks too). ``from a import b`` counts as importing module a.b
    when that is a module, else a."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith("torchresume"):
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in modules else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("torchresume"))
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    names = set(files)
    graph = {m: {d for d in _imports(p, m, names) if d in names and d != m} for m, p in files.items()}
    graph["torchresume"] |= set(torchresume._HARNESS.values())  # importlib.import_module, unseen by ast
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_imports_only_its_own_layer_or_below() -> None:
    wrong = []
    for module, deps in sorted(_graph().items()):
        layer = _layer(module)
        for dep in sorted(deps):
            target = _layer(dep)
            if target in LEAVES or target == layer:
                continue
            if (layer in LEAVES or RANK[target] > RANK[layer]) and (module, dep) not in ALLOWED_UPWARD:
                wrong.append(f"{module} -> {dep}")
    assert wrong == []


def test_the_engine_never_imports_the_facade() -> None:
    graph = _graph()
    for module in ("torchresume.manager", "torchresume.catalog", "torchresume.inspection"):
        assert not {d for d in graph[module] if d == "torchresume.api" or d.startswith("torchresume.api.")}


def test_every_allowed_upward_import_exists() -> None:
    """ALLOWED_UPWARD stays short and true: an entry the code no longer needs is removed."""
    graph = _graph()
    assert {(m, d) for m, d in ALLOWED_UPWARD if d not in graph.get(m, set())} == set()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of ``graph`` with more than one module, each sorted (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in graph[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            part = stack[stack.index(node):]
            del stack[stack.index(node):]
            if len(part) > 1:
                found.append(sorted(part))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


def test_no_import_cycles() -> None:
    """Module to module, inside a package (files/single.py <-> files/directory.py) as between layers;
    each cycle is reported with its modules and the imports that tie them."""
    graph = _graph()
    shown = [" | ".join(f"{m} -> {', '.join(sorted(d for d in graph[m] if d in part))}" for m in part)
             for part in _cycles(graph)]
    assert shown == []


def test_the_cycle_check_sees_type_only_imports() -> None:
    """A cycle closed by an ``if TYPE_CHECKING:`` import or a function-level one is found."""
    a, b = "torchresume.a", "torchresume.b"
    type_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from torchresume.b import B\n"
    assert _imports(pathlib.Path("a.py"), a, {a, b}, type_only) == {b}
    assert _imports(pathlib.Path("b.py"), b, {a, b}, "def f():\n    from torchresume import a\n") == {a}
    assert _cycles({a: {b}, b: {a}, "torchresume.c": {a}}) == [[a, b]]


def test_every_layer_has_a_rank() -> None:
    """A new package must be placed in the layering above (and in docs/ARCHITECTURE.md)."""
    assert {_layer(m) for m in _graph()} - set(RANK) - LEAVES == set()
