"""The import graph of the package: every module imports on its own, no cycles, lower layers stay below.

The graph is read from the source (AST), not from running it: an edge A -> B for every `import
unetlab.B` / `from unetlab.B import x` in A (imports under `if TYPE_CHECKING:` never count).
Module-level edges are what runs at import time; a second check counts imports inside functions
too, since a lazy import that closes a cycle only hides it; the layering check counts every import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "unetlab"

# Lower layers never import the upper ones (the building blocks know nothing of the stages that use them).
LOWER = ("unetlab.data", "unetlab.models", "unetlab.metrics", "unetlab.errors", "unetlab.files")
UPPER = ("unetlab.engine", "unetlab.evaluation", "unetlab.inference", "unetlab.cli", "unetlab.api",
         "unetlab.bench", "unetlab.demo", "unetlab.export", "unetlab.serve", "unetlab.studies", "unetlab.tuning")


def module_names() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module_level: bool) -> list[ast.Import | ast.ImportFrom]:
    """Import statements of a module: those that run when it is imported (module level, class bodies,
    try/if blocks), or with `module_level=False` every one outside `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(ast.Module(body=[other], type_ignores=[]))
            elif module_level and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            else:
                visit(child)
    visit(tree)
    return found


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package modules one import statement loads (`from unetlab.data import cache` is unetlab.data.cache)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name.split(".")[0] == "unetlab"}
    base = node.module or ""
    if node.level:  # relative: from the module's package, one level up per extra dot
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    if base.split(".")[0] != "unetlab":
        return set()
    out = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.add(sub if sub in known else base)
    return out


def import_graph(module_level: bool) -> dict[str, set[str]]:
    names = module_names()
    known = set(names)
    graph: dict[str, set[str]] = {}
    for module, path in names.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets: set[str] = set()
        for node in _imports(tree, module_level):
            targets |= _targets(node, module, path.name == "__init__.py", known)
        graph[module] = {t for t in targets if t in known and t != module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_in(graph, set(group), group[0]) for group in groups]


def _cycle_in(graph: dict[str, set[str]], group: set[str], start: str) -> list[str]:
    """A shortest path start -> ... -> start inside one strongly connected group (breadth first)."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if nxt not in parents:
                    parents[nxt] = node
                    following.append(nxt)
        frontier = following
    return [start]


def test_the_graph_reader_sees_real_edges():
    graph = import_graph(module_level=True)
    assert "unetlab.data.formats.samples" in graph["unetlab.data.formats.registry"]
    assert "unetlab.data.cache" in graph["unetlab.data.formats.registry"]
    known = set(module_names())
    statement = ast.parse("from unetlab.data import cache, dataset").body[0]
    assert _targets(statement, "unetlab.x", False, known) == {"unetlab.data.cache", "unetlab.data.dataset"}
    statement = ast.parse("from unetlab import load_config").body[0]
    assert _targets(statement, "unetlab.x", False, known) == {"unetlab"}
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = find_cycles(import_graph(module_level=True))
    assert not cycles, "import cycles (module level):\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_cycle_hidden_by_a_lazy_import():
    """An import moved into a function still closes the cycle it dodges (config -> losses -> config was one)."""
    cycles = find_cycles(import_graph(module_level=False))
    shown = "\n".join(" -> ".join(cycle) for cycle in cycles)
    assert not cycles, f"import cycles (counting imports inside functions):\n{shown}"


def test_lower_layers_never_import_upper_ones():
    graph = import_graph(module_level=False)
    wrong = sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                   if module.startswith(LOWER) and target.startswith(UPPER))
    assert not wrong, "lower layers (data, models, metrics, errors, files) import upper ones:\n" + "\n".join(wrong)


def test_every_module_imports_on_its_own():
    """One fresh interpreter; before each module every unetlab module is forgotten, so each import starts
    from nothing of the package (third-party modules stay loaded: they are not under test)."""
    names = [name for name in module_names() if name != "unetlab.__main__"]  # __main__ runs the CLI
    script = textwrap.dedent(f"""
        import importlib, sys, traceback
        failed = []
        for name in {names!r}:
            for loaded in [m for m in sys.modules if m == "unetlab" or m.startswith("unetlab.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except BaseException:
                failed.append(name + ":\\n" + traceback.format_exc(limit=-4))
        print("\\n".join(failed))
        sys.exit(1 if failed else 0)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
