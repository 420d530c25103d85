"""The design, held by a test: the import graph is acyclic, the size budgets hold, and the boundaries stand.

Read from the source with ``ast`` (nothing is imported). Every import counts as an edge, wherever it stands: at
module level, inside a function, or under ``if TYPE_CHECKING:`` — an import moved out of sight to dodge a cycle is
still a cycle. See ARCHITECTURE.md for the layers these rules keep apart.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "bot", "cogs")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 40
MAX_CLASS_LINES = 300
#: The only functions allowed to run long: the pipeline's numbered script, and pure config literals.
LONG_FUNCTIONS_ALLOWED = {
    ("engine.generation.pipeline", "StylePipeline.__call__"),
    ("engine.models.tiny", "_zimage_components"),
    ("engine.models.tiny", "_qwen3vl"),
}
#: Private attributes of other objects that are read on purpose, each with its reason.
PRIVATE_READS_ALLOWED = {
    "_interrupt",  # diffusers' documented way to stop a pipeline from its step callback
    "_dynamo",  # torch._dynamo: compile counters and reset, the only API there is
    "_negative_number_matcher",  # argparse: let "-6" be a layer value, not an option
    "_exit",  # os._exit
    "_getframe",  # sys._getframe
}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


@cache
def _tree(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(encoding="utf-8"), filename=str(MODULES[name]))


def _imported(name: str) -> set[str]:
    """Every module ``name`` imports (dotted names, project or not)."""
    out: set[str] = set()
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names
                       if f"{node.module}.{alias.name}" in MODULES)
    return out


def _project_edges(name: str) -> set[str]:
    return {m for m in _imported(name) if m in MODULES and m != name and not name.startswith(m + ".")}


def _cycles(nodes, edges) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan) of the graph ``edges(node) -> nodes``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges(v):
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in nodes:
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_is_acyclic():
    assert _cycles(MODULES, _project_edges) == []


def test_dependencies_point_one_way():
    """cogs → bot → engine: the engine knows nothing of Discord or the bot, the bot nothing of the cogs."""
    bad = []
    for name in MODULES:
        for target in _imported(name):
            top = target.split(".")[0]
            if name.startswith("engine") and top in ("discord", "aiosqlite", "aiohttp", "bot", "cogs"):
                bad.append((name, target))
            if name.startswith("bot") and top == "cogs":
                bad.append((name, target))
            if name.startswith("cogs") and top in ("torch", "diffusers", "transformers"):
                bad.append((name, target))
    assert bad == []


def test_the_bot_reaches_jobs_only_through_the_job_engine_protocol():
    """Only ``bot.services`` (which builds it) names the in-process worker; everything else in bot/ and cogs/ is typed
    by ``engine.serving.protocols.JobEngine``, so a second implementation needs no change there."""
    users = sorted(name for name in MODULES if name.split(".")[0] in ("bot", "cogs")
                   and any(t == "engine.serving.worker" or t.startswith("engine.serving.worker.")
                           for t in _imported(name)))
    assert users == ["bot.services"]


def test_module_sizes():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def _definitions(name: str):
    """``(qualified name, node)`` of every function and class, nested ones included."""
    def walk(node: ast.AST, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = f"{prefix}{child.name}"
                yield qual, child
                yield from walk(child, qual + ".")

    yield from walk(_tree(name), "")


def _length(node: ast.AST) -> int:
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return node.end_lineno - first + 1  # type: ignore[attr-defined]


def test_function_and_class_sizes():
    long_functions, long_classes = [], []
    for name in MODULES:
        for qual, node in _definitions(name):
            if isinstance(node, ast.ClassDef):
                if _length(node) > MAX_CLASS_LINES:
                    long_classes.append((name, qual, _length(node)))
            elif _length(node) > MAX_FUNCTION_LINES and (name, qual) not in LONG_FUNCTIONS_ALLOWED:
                long_functions.append((name, qual, _length(node)))
    assert long_functions == [] and long_classes == []


def test_no_private_names_cross_modules():
    """No ``from x import _name``, no ``import`` of another package's ``_private`` module, and no reading of another
    object's ``_attribute`` (``self``/``cls`` are one's own)."""
    bad = []
    for name in MODULES:
        package = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(_tree(name)):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        bad.append((name, f"from {node.module} import {alias.name}"))
                private = [p for p in node.module.split(".") if p.startswith("_") and not p.startswith("__")]
                ours = node.module.split(".")[0] in PACKAGES  # a library's private module is its own business
                if ours and private and node.module.rsplit(".", 1)[0] != package:
                    bad.append((name, f"from {node.module} import ..."))
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue
                if node.attr not in PRIVATE_READS_ALLOWED:
                    bad.append((name, f"line {node.lineno}: .{node.attr}"))
    assert bad == []


def test_the_checks_can_fail():
    """The checks see what they are meant to: a cycle (also one through a function-local import), an import of
    discord, and a 51-line function — on synthetic sources."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph, graph.__getitem__) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    import discord\n" + "    x = 1\n" * 49)
    assert {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} == {"discord"}
    (function,) = tree.body
    assert _length(function) == 51 > MAX_FUNCTION_LINES


def test_import_engine_is_cheap_and_exposes_the_public_api():
    code = ("import sys, engine\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'import engine pulled in torch'\n"
            "print(' '.join(engine.__all__))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    names = set(out.stdout.split())
    assert {"StylePipeline", "StylizeRequest", "blend", "fit_caption", "mask_outliers", "EngineWorker", "make_tiny",
            "load_settings"} <= names


@pytest.mark.parametrize("name", ["StylizeRequest", "load_settings", "StylePipeline", "EngineWorker", "blend",
                                  "fit_caption", "mask_outliers", "make_tiny"])
def test_each_public_name_resolves(name):
    import engine

    assert callable(getattr(engine, name))
