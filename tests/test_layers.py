"""docs/ARCHITECTURE.md's import rules, checked on the source: layers import downwards, no cycles.

Every import counts, wherever it stands: at module level, inside a function or method, in a
nested block. A lazy import (torch.distributed, matplotlib, MindSpore's protobuf, the harness
from the facade) is fine when it goes down the layering and closes no cycle. Only imports
under ``if TYPE_CHECKING:`` are left out: they never run, they only name a type.
"""

from __future__ import annotations

import ast
import pathlib

import torchresume

ROOT = pathlib.Path(torchresume.__file__).parent
# A package (or top-level module) may import only ranks at or below its own.
RANK = {"storage": 0, "format": 1, "state": 1, "files": 2,
        "catalog": 3, "retention": 3, "run_lock": 3, "inspection": 3, "transfer": 3, "signals": 3,
        "staging": 3, "snapshot": 3, "naming": 3, "save_slot": 3, "world": 3, "distributed": 3,
        "manager": 4, "sharded_layout": 4, "api": 4, "data": 4, "": 4, "train": 5, "integrations": 6, "app": 6,
        "cli": 7, "__main__": 8}
LEAVES = {"errors", "log", "async_writer", "openmp"}  # used from every layer, import nothing above them
# Imports that go up a layer on purpose, each lazy and each closing no cycle (checked below).
ALLOWED_UPWARD = {
    # The facade's harness names (Model, ModelCheckpoint, ...): loaded through importlib on first
    # use (``__getattr__`` + ``_HARNESS``), so ``import torchresume`` stays core-only.
    ("torchresume", "torchresume.train"),
    ("torchresume", "torchresume.train.exception_save"),
}


def _module_name(path: pathlib.Path) -> str:
    parts = ["torchresume", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _running_nodes(node: ast.AST) -> list[ast.AST]:
    """Every node under ``node`` (functions, methods, nested blocks) but ``if TYPE_CHECKING:`` bodies."""
    found = []
    for child in ast.iter_child_nodes(node):
        found.append(child)
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.dump(child.test):
            for other in child.orelse:
                found += [other, *_running_nodes(other)]
        else:
            found += _running_nodes(child)
    return found


def _imports(path: pathlib.Path, module: str, modules: set[str]) -> set[str]:
    """``from a import b`` counts as importing module a.b when that is a module, else a."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in _running_nodes(ast.parse(path.read_text())):
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


def test_no_import_cycles() -> None:
    """Module to module, inside a package (files/single.py <-> files/directory.py) as between layers."""
    graph = _graph()
    state: dict[str, int] = {}  # 1 visiting, 2 done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_every_layer_has_a_rank() -> None:
    """A new package must be placed in the layering above (and in docs/ARCHITECTURE.md)."""
    assert {_layer(m) for m in _graph()} - set(RANK) - LEAVES == set()
