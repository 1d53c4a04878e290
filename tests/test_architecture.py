"""What docs/architecture.md claims of the imports, checked on the source (ast, nothing imported):

- the modules of rag/, retriever/ and generator/ import one another without a cycle, counting
  the imports that run when a module loads (``if TYPE_CHECKING:`` blocks and function bodies do
  not), and the packages an import loads on the way (``rag.common.errors`` loads ``rag``);
- each layer imports only the layers below it: ``rag.common``, then ``retriever`` and
  ``generator`` (neither imports the other), then the rest of ``rag``, lazy imports included;
- an import inside a function is lazy on purpose and says why: a ``# lazy: ...`` comment on its
  line, or on the line just above it or above the run of imports it belongs to.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rag", "retriever", "generator")
LAYERS = (("rag.common",), ("retriever", "generator"), ("rag",))  # bottom first


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _ours(name: str) -> str | None:
    """The module of ours that importing ``name`` (a module or a name in one) loads, or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """Our modules that ``node``, in ``module``, imports by name."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        names = [f"{base}.{alias.name}" for alias in node.names]
    return {found for found in map(_ours, names) if found}


def _load_time_imports(tree: ast.Module):
    """The import statements that run when the module loads."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
        else:
            todo += ast.iter_child_nodes(node)


def _function_imports(tree: ast.Module) -> list[list[ast.Import | ast.ImportFrom]]:
    """The imports inside function bodies, as runs of consecutive import statements."""
    runs = {}
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(func):
            for field in ("body", "orelse", "finalbody"):
                body = getattr(node, field, None)
                if not isinstance(body, list):  # a lambda's or an if-expression's: no statements
                    continue
                run = []
                for stmt in [*body, None]:
                    if isinstance(stmt, ast.Import | ast.ImportFrom):
                        run.append(stmt)
                    elif run:
                        runs[run[0].lineno] = run
                        run = []
    return list(runs.values())


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours its loading imports, with the packages those load first."""
    graph = {}
    for name, tree in TREES.items():
        direct = set().union(*(_targets(name, node) for node in _load_time_imports(tree)))
        packages = {target.rsplit(".", i)[0] for target in direct
                    for i in range(1, target.count(".") + 1)}
        graph[name] = (direct | packages) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _layer(module: str) -> int:
    return next(i for i, prefixes in enumerate(LAYERS)
                if any(module == p or module.startswith(p + ".") for p in prefixes))


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_packages_import_one_another_without_cycles():
    graph = import_graph()
    assert graph["retriever.search"] >= {"retriever.encoder", "rag.common.errors", "rag.common", "rag"}
    assert cycles(graph) == []


def test_each_layer_imports_only_the_layers_below():
    wrong = []
    for name, tree in TREES.items():
        layer = _layer(name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(name, node):
                    if target in PACKAGES:  # the package itself: lazy exports only
                        continue
                    if _layer(target) > layer or (_layer(target) == layer
                                                  and target.split(".")[0] != name.split(".")[0]):
                        wrong.append(f"{MODULES[name].relative_to(ROOT)}:{node.lineno}: {target}")
    assert wrong == []


def _comments(path: Path) -> dict[int, str]:
    """Line number -> the comment on that line."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return {tok.start[0]: tok.string for tok in tokens if tok.type == tokenize.COMMENT}


def _says_lazy(comments: dict[int, str], stmt: ast.stmt, run: list[ast.stmt]) -> bool:
    """A ``# lazy`` comment on ``stmt``'s lines, or in the comment lines just above ``stmt`` or
    just above the run of imports it belongs to."""
    lines = set(range(stmt.lineno, stmt.end_lineno + 1))
    for first in (stmt.lineno, run[0].lineno):
        above = first - 1
        while above in comments:
            lines.add(above)
            above -= 1
    return any(comments.get(line, "").startswith("# lazy") for line in lines)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_import_in_a_function_says_why_it_is_lazy(package):
    unmarked = []
    for name, tree in TREES.items():
        if name.split(".")[0] != package:
            continue
        comments = _comments(MODULES[name])
        for run in _function_imports(tree):
            for stmt in run:
                if not _says_lazy(comments, stmt, run):
                    unmarked.append(f"{MODULES[name].relative_to(ROOT)}:{stmt.lineno}: "
                                    f"{ast.unparse(stmt)}")
    assert unmarked == []
