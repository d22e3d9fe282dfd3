"""How the app's modules import each other, read from their source with `ast`: no cycle,
between modules or between the layers (DESIGN.md: imports point down only), and no route
module importing another. And how long they are: none over 400 lines (issue 19)."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"
# The longest a module of app/ may be, in lines: past it, it is split along its seams.
MAX_MODULE_LINES = 400


def module_name(path: Path, root: Path = APP) -> str:
    """`app.api.query` for app/api/query.py, `app.cluster` for app/cluster/__init__.py."""
    parts = ["app", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def has_routes(source: str) -> bool:
    """True for a module that defines routes: it makes a `router = APIRouter(...)`."""
    return any(
        isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "router" for t in node.targets)
        and isinstance(node.value, ast.Call)
        and getattr(node.value.func, "id", getattr(node.value.func, "attr", None)) == "APIRouter"
        for node in ast.walk(ast.parse(source))
    )


def route_modules(root: Path = APP) -> set[str]:
    """The modules of app/api that define routes."""
    return {module_name(p, root) for p in (root / "api").glob("*.py") if has_routes(p.read_text())}


def route_imports(graph: Mapping[str, set[str]], routes: set[str]) -> dict[str, set[str]]:
    """The modules of app/api that import a route module, and the route modules they import."""
    return {m: graph[m] & routes for m in graph if m.startswith("app.api.") and graph[m] & routes}


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import that runs, wherever it is (imports for type checkers only left out)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imported(source: str, name: str, modules: frozenset[str]) -> set[str]:
    """The app modules that a module's source imports (`from app.api import query` imports
    app.api.query; `from app.api.query import X` imports app.api.query)."""
    package = name if f"{name}.__init__" in modules else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for dotted in targets:
            target = dotted
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = APP) -> dict[str, set[str]]:
    """Each module of the app, and the app modules it imports."""
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = frozenset(paths) | frozenset(
        f"{module_name(p, root)}.__init__" for p in paths.values() if p.name == "__init__.py"
    )
    return {name: imported(p.read_text(), name, modules) for name, p in paths.items()}


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            part = []
            while True:
                top = stack.pop()
                part.append(top)
                if top == node:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer(module: str) -> str:
    """The layer a module belongs to: its package under app (app.api, app.sql, ...), or
    the module itself for app's top-level modules (app.settings, app.main, ...)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def layer_graph(graph: Mapping[str, set[str]]) -> dict[str, set[str]]:
    """What each layer imports from the other layers."""
    layers: dict[str, set[str]] = {}
    for module, targets in graph.items():
        own = layer(module)
        layers.setdefault(own, set()).update(layer(t) for t in targets if layer(t) != own)
    return layers


def test_the_app_modules_import_each_other_without_a_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "app.settings" in graph["app.main"]
    assert cycles(graph) == []


def test_the_layers_import_each_other_without_a_cycle() -> None:
    # Catches what a module graph does not: app.settings importing app.cluster.dsn while
    # app.cluster imports app.settings is no cycle of modules, yet one of layers.
    assert cycles(layer_graph(import_graph())) == []


def test_no_module_of_app_api_imports_a_route_module() -> None:
    graph = import_graph()
    routes = route_modules()
    assert {"app.api.query", "app.api.named", "app.api.neon", "app.api.probes"} <= routes
    assert "app.api.fast_lane" not in routes and "app.api.errors" not in routes
    assert route_imports(graph, routes) == {}


def test_the_service_layer_is_below_http() -> None:
    graph = import_graph()
    upward = {
        m: {t for t in targets if layer(t) in ("app.api", "app.main")}
        for m, targets in graph.items()
        if layer(m) in ("app.service", "app.sql", "app.cluster", "app.migrations")
    }
    assert {m: t for m, t in upward.items() if t} == {}


def test_the_checks_see_a_cycle_and_a_route_importing_a_route(tmp_path: Path) -> None:
    # The same functions over a small app of their own, so a check that sees nothing fails.
    (tmp_path / "api").mkdir()
    (tmp_path / "cluster").mkdir()
    for package in ("", "api", "cluster"):
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "settings.py").write_text("from app.cluster.dsn import parse\n")
    (tmp_path / "cluster" / "dsn.py").write_text("import re\n")
    (tmp_path / "cluster" / "node.py").write_text("from app.settings import Settings\n")
    routes = "from fastapi import APIRouter\nrouter = APIRouter()\n"
    (tmp_path / "api" / "query.py").write_text(routes + "from . import named\n")
    (tmp_path / "api" / "named.py").write_text(
        routes
        + "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app.api import query\n"
    )
    (tmp_path / "api" / "errors.py").write_text("import fastapi\nROUTER = fastapi.APIRouter()\n")
    assert route_modules(tmp_path) == {"app.api.query", "app.api.named"}
    graph = import_graph(tmp_path)
    assert graph["app.api.query"] == {"app.api", "app.api.named"}
    assert graph["app.api.named"] == set()  # imports for type checkers only do not count
    assert route_imports(graph, route_modules(tmp_path)) == {"app.api.query": {"app.api.named"}}
    assert cycles(graph) == []
    assert cycles(layer_graph(graph)) == [["app.cluster", "app.settings"]]
    (tmp_path / "api" / "named.py").write_text(routes + "from app.api.query import QueryRequest\n")
    assert cycles(import_graph(tmp_path)) == [["app.api.named", "app.api.query"]]


def long_modules(root: Path = APP, most: int = MAX_MODULE_LINES) -> dict[str, int]:
    """The modules under `root` longer than `most` lines, with their lengths."""
    lengths = {
        path.relative_to(root).as_posix(): len(path.read_text().splitlines())
        for path in sorted(root.rglob("*.py"))
    }
    return {name: lines for name, lines in lengths.items() if lines > most}


def test_no_module_of_app_is_over_400_lines() -> None:
    assert len(list(APP.rglob("*.py"))) > 50
    assert long_modules() == {}


def test_the_length_check_sees_a_module_over_the_limit(tmp_path: Path) -> None:
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "tree.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    (tmp_path / "settings.py").write_text("x = 1\n" * MAX_MODULE_LINES)
    assert long_modules(tmp_path) == {"sql/tree.py": MAX_MODULE_LINES + 1}
