"""docs/ARCHITECTURE.md's import rules, checked on the source: layers import downwards, no cycles.

Only module-level imports count (``if TYPE_CHECKING:`` blocks and imports inside
functions are how a lower layer names a higher one's type or loads it lazily).
"""

from __future__ import annotations

import ast
import pathlib

import torchresume

ROOT = pathlib.Path(torchresume.__file__).parent
# A package (or top-level module) may import only ranks at or below its own.
RANK = {"storage": 0, "format": 1, "state": 1, "files": 2,
        "catalog": 3, "retention": 3, "run_lock": 3, "inspection": 3, "transfer": 3, "signals": 3,
        "manager": 3, "staging": 3, "naming": 3, "save_slot": 3,
        "api": 4, "data": 4, "": 5, "train": 5, "distributed": 5, "integrations": 6, "app": 6, "cli": 7,
        "__main__": 8}
LEAVES = {"errors", "log", "async_writer"}  # used from every layer, import nothing above them


def _module_name(path: pathlib.Path) -> str:
    parts = ["torchresume", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """``from a import b`` counts as importing module a.b when that is a module, else a."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("torchresume"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("torchresume"))
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    names = set(files)
    return {m: {d for d in _module_level_imports(p, names) if d in names and d != m} for m, p in files.items()}


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
            if layer in LEAVES or RANK[target] > RANK[layer]:
                wrong.append(f"{module} -> {dep}")
    assert wrong == []


def test_the_engine_never_imports_the_facade() -> None:
    graph = _graph()
    for module in ("torchresume.manager", "torchresume.catalog", "torchresume.inspection"):
        assert not {d for d in graph[module] if d == "torchresume.api" or d.startswith("torchresume.api.")}


def test_no_import_cycles() -> None:
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
