"""The house rules, read off the source: no import cycles, lower floors never import higher ones, and
no per-method dispatch outside ``ultrassl/methods/``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ultrassl"

#: floors that must not know the facade or any method
LOWER = ("ultrassl.data", "ultrassl.models", "ultrassl.transforms", "ultrassl.checkpoint")
#: the only modules that may import the facade (the command line, the one-call Python API and the demo
#: script use it)
FACADE_USERS = {"ultrassl.cli", "ultrassl.__main__", "ultrassl.demo", "ultrassl.workflow"}
#: engines that stand side by side, and what each must not import: the online probe (monitor) shares
#: fine-tuning's frames, features, folds and scores through the floors below both, never ``finetune``
#: itself; and those shared floors know neither engine
MUST_NOT_IMPORT = {
    "ultrassl.monitor": ("ultrassl.finetune",),
    **{
        low: ("ultrassl.finetune", "ultrassl.monitor")
        for low in (*LOWER, "ultrassl.feature_scores", "ultrassl.metrics")
    },
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """Module -> the ultrassl modules it imports anywhere (top level, in functions, under TYPE_CHECKING)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
                    base = base.strip(".")
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

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
            visit(v)
    return out


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "ultrassl.methods.registry" in graph["ultrassl.methods.mae"]
    assert graph["ultrassl.cli"] >= {"ultrassl.api", "ultrassl.methods"}
    # the walk finds imports anywhere: one inside a function is an edge too
    code = "def f():\n    from ultrassl.api import pretrain\n"
    found = {n.module for n in ast.walk(ast.parse(code)) if isinstance(n, ast.ImportFrom)}
    assert found == {"ultrassl.api"}


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_lower_floors_import_neither_the_facade_nor_a_method():
    bad = [
        f"{mod} imports {dep}"
        for mod, deps in import_graph().items()
        if mod.startswith(LOWER)
        for dep in deps
        if dep == "ultrassl.api" or dep == "ultrassl.runs" or dep.startswith("ultrassl.methods")
    ]
    assert bad == []


def _forbidden_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{mod} imports {dep}"
        for mod, deps in graph.items()
        for floor, banned in MUST_NOT_IMPORT.items()
        if mod == floor or mod.startswith(floor + ".")
        for dep in deps
        if dep.startswith(banned)
    )


def test_the_probe_and_the_shared_floors_do_not_import_finetune():
    graph = import_graph()
    assert _forbidden_imports(graph) == []
    # the rule catches the edge the probe once had (monitor.probe importing finetune.classify for its
    # frame loading), and one from a shared floor back up
    old = {
        **graph,
        "ultrassl.monitor.probe": graph["ultrassl.monitor.probe"] | {"ultrassl.finetune.classify"},
    }
    assert _forbidden_imports(old) == ["ultrassl.monitor.probe imports ultrassl.finetune.classify"]
    up = {**graph, "ultrassl.data.frameset": graph["ultrassl.data.frameset"] | {"ultrassl.monitor.probe"}}
    assert _forbidden_imports(up) == ["ultrassl.data.frameset imports ultrassl.monitor.probe"]


def test_only_the_command_line_and_the_demo_import_the_facade():
    users = {mod for mod, deps in import_graph().items() if "ultrassl.api" in deps}
    assert users <= FACADE_USERS, sorted(users - FACADE_USERS)


#: a branch on the method's name (``cfg.method == "uscl"``, ``method in (...)``, ``"x" == method``)
_DISPATCH = re.compile(r"\bmethod\s*(==|!=|not\s+in\b|in\b)|(==|!=|\bin)\s*[\w.]*\bmethod\b")


@pytest.mark.parametrize("path", sorted(p for p in SRC.rglob("*.py") if "methods" not in p.parts), ids=str)
def test_no_method_dispatch_outside_the_methods(path: Path):
    assert _DISPATCH.search('if cfg.method == "uscl":') and _DISPATCH.search("x = m in method")
    hits = [
        f"{path.relative_to(SRC)}:{i}: {line.strip()}"
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if _DISPATCH.search(line.split("#", 1)[0])
    ]
    assert hits == []
