"""The house's structure, checked on its import graph: no cycles, each room imports only rooms below it, and
no sdq import hidden inside a function (where it would hide a cycle) unless listed here with its reason.

The graph is read with ``ast`` from every module under ``sdq/``: top-level and function-local imports,
``from . import x`` resolved against the importing module's package, ``import a.b`` counted as ``a.b``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "sdq"

# Rooms from the bottom up; a room imports only rooms on lower levels (same level: no imports either way).
ROOMS: list[tuple[str, ...]] = [
    ("errors", "results"),
    ("quant",),
    ("int8",),
    ("models", "data", "distill"),
    ("config", "calib"),
    ("lit",),
    ("teacher",),
    ("evaluate",),
    ("export", "report"),
    ("pipeline",),
    ("cli",),
]
# Modules that may import any room: command lines (thin entry points above the house) and the lazy
# top-level package.
ENTRY_POINTS = {"sdq", "sdq.export.__main__", "sdq.calib.sensitivity_cli"}
# Function-local imports of sdq modules that stay local, each with its reason: (importer, imported).
# ``"*"``: every sdq import of that module.
LOCAL_IMPORTS = {
    ("sdq.config", "sdq.quant"): "imports torch; train.py imports sdq.config (its resolvers) before parsing",
    ("sdq.export.__main__", "*"): "a command line: --help and argument errors come before torch and Lightning",
    ("sdq.export.writer", "sdq.export.onnx_build"): "onnx_build imports onnx; only exports with ONNX need it",
    ("sdq.export.peers", "sdq.export.onnx_build"): "onnx_build imports onnx; only the ONNX peer needs it",
    ("sdq.report.plots", "sdq.distill.diagnostics"): "imports torch; plots of finished runs are drawn without it",
    ("sdq.report.runner", "sdq.evaluate"): "torch + Lightning load only once the report's input is known good",
    ("sdq.report.wandb_log", "sdq.lit.logger"): "imports Lightning; W&B tables of finished runs log without it",
}


@dataclass(frozen=True)
class Import:
    target: str  # dotted module name as written (resolved for relative imports)
    line: int
    local: bool  # inside a function


def module_name(path: Path, root: Path = PKG) -> str:
    """``sdq/quant/base.py`` -> ``sdq.quant.base``; ``sdq/quant/__init__.py`` -> ``sdq.quant``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool) -> list[Import]:
    """Every import statement of a module's source, with the dotted names it imports (``from a import b``
    gives ``a.b``, narrowed to ``a`` later when ``a.b`` is not a module)."""
    found: list[Import] = []
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend(Import(a.name, child.lineno, inner) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                found.extend(Import(f"{base}.{a.name}" if a.name != "*" else base, child.lineno, inner)
                             for a in child.names)
            visit(child, inner)

    visit(ast.parse(source), False)
    return found


def resolve(target: str, modules: set[str]) -> str | None:
    """The module a dotted name refers to: itself, or its longest prefix that is a module (``sdq.quant.X``
    -> ``sdq.quant``); None outside the package."""
    while target:
        if target in modules:
            return target
        target = target.rpartition(".")[0]
    return None


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, dict[str, list[Import]]]:
    """``{module: {imported module: [imports]}}`` over ``sources`` = ``{module: (source, is_package)}``."""
    modules = set(sources)
    graph: dict[str, dict[str, list[Import]]] = {m: {} for m in sources}
    for mod, (src, is_pkg) in sources.items():
        for imp in imports_of(src, mod, is_pkg):
            dst = resolve(imp.target, modules)
            if dst is not None and dst != mod:
                graph[mod].setdefault(dst, []).append(imp)
    return graph


def cycles(graph: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                strongconnect(w)
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return out


def room(module: str) -> str:
    """``sdq.quant.base`` -> ``quant``; ``sdq.pipeline`` -> ``pipeline``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def level(name: str) -> int:
    for i, names in enumerate(ROOMS):
        if name in names:
            return i
    raise AssertionError(f"room {name!r} is in no level of ROOMS: place it there")


def room_violations(graph: dict[str, dict[str, list[Import]]]) -> list[str]:
    """Imports of a room on the same or a higher level than the importer's (entry points exempt)."""
    bad = []
    for src, targets in graph.items():
        if src in ENTRY_POINTS:
            continue
        for dst, imps in targets.items():
            a, b = room(src), room(dst)
            if a != b and (b == "" or level(b) >= level(a)):
                bad.append(f"{src}:{imps[0].line} imports {dst} ({a} may import only rooms below it)")
    return bad


def allowed_local(src: str, dst: str) -> bool:
    return (src, dst) in LOCAL_IMPORTS or (src, "*") in LOCAL_IMPORTS


def local_violations(graph: dict[str, dict[str, list[Import]]]) -> list[str]:
    """One line per import statement of an sdq module inside a function that LOCAL_IMPORTS does not list."""
    found = {(src, imp.line, dst) for src, targets in graph.items() for dst, imps in targets.items()
             for imp in imps if imp.local and not allowed_local(src, dst)}
    return [f"{src}:{line} imports {dst} inside a function (import it at the top, or list it in "
            "LOCAL_IMPORTS with its reason)" for src, line, dst in sorted(found)]


def package_sources(root: Path = PKG) -> dict[str, tuple[str, bool]]:
    return {module_name(p, root): (p.read_text(), p.name == "__init__.py") for p in sorted(root.rglob("*.py"))}


@pytest.fixture(scope="module")
def graph():
    return import_graph(package_sources())


# ---------------------------------------------------------------- the graph functions themselves


TINY = {
    "sdq": ("", True),
    "sdq.quant": ("from sdq.quant.base import B\n", True),
    "sdq.quant.base": ("import torch\nfrom . import config\n", False),
    "sdq.quant.config": ("def f():\n    from sdq.quant.base import B\n", False),
    "sdq.lit": ("import sdq.quant.base\nfrom ..quant import config\n", True),
}


def test_graph_resolves_relative_dotted_and_local_imports():
    g = import_graph(TINY)
    assert set(g["sdq.quant.base"]) == {"sdq.quant.config"}  # from . import config; torch is outside
    assert set(g["sdq.lit"]) == {"sdq.quant.base", "sdq.quant.config"}  # import a.b; from ..quant import x
    assert set(g["sdq.quant"]) == {"sdq.quant.base"}  # from pkg.mod import Name -> pkg.mod
    (imp,) = g["sdq.quant.config"]["sdq.quant.base"]
    assert imp.local and imp.line == 2
    assert not g["sdq.lit"]["sdq.quant.base"][0].local


def test_graph_finds_a_cycle_hidden_in_a_function():
    g = import_graph(TINY)
    assert cycles(g) == [["sdq.quant.base", "sdq.quant.config"]]
    assert local_violations(g) == [("sdq.quant.config:2 imports sdq.quant.base inside a function (import it at "
                                    "the top, or list it in LOCAL_IMPORTS with its reason)")]
    fixed = {**TINY, "sdq.quant.config": ("X = 1\n", False)}
    assert cycles(import_graph(fixed)) == []


def test_room_order_is_checked():
    upward = {**TINY, "sdq.quant.config": ("from sdq.lit import thing\n", False)}
    assert room_violations(import_graph(upward)) == [
        "sdq.quant.config:1 imports sdq.lit (quant may import only rooms below it)"]
    assert room_violations(import_graph(TINY)) == []  # lit -> quant: downward


# ---------------------------------------------------------------- the house


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_rooms_import_only_rooms_below_them(graph):
    assert room_violations(graph) == []


def test_quant_knows_only_tensors_and_int8_only_quant(graph):
    for src, targets in graph.items():
        rooms = {room(t) for t in targets} - {room(src)}
        if room(src) == "quant":
            assert rooms <= {"errors"}, (src, rooms)
        if room(src) == "int8":
            assert rooms <= {"quant", "errors"}, (src, rooms)


def test_no_hidden_local_imports_of_sdq_modules(graph):
    assert local_violations(graph) == []
    stale = [(src, dst) for src, dst in LOCAL_IMPORTS
             if not any(i.local for d, imps in graph.get(src, {}).items() if dst in ("*", d) for i in imps)]
    assert stale == [], "LOCAL_IMPORTS lists imports that are no longer local"
