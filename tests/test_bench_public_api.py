"""The bench is a client of the public API: no script under bench/ imports a private name of ultrassl
(``from ultrassl.x import _name``, ``import ultrassl._x``) or reaches a private attribute (``obj._x``,
``getattr(obj, "_x")``). Dunder names pass, and so do the bench's own private helpers (a name the
bench itself defines)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def defined_names(trees: list[ast.AST]) -> set[str]:
    """Every name the bench defines: functions, classes, assigned names and attributes, arguments."""
    names = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return names


def private_uses(tree: ast.AST, own: set[str]) -> list[str]:
    """``line: what`` for each private name of ultrassl that ``tree`` uses."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ultrassl":
            if any(_private(p) for p in node.module.split(".")):
                found.append(f"{node.lineno}: from {node.module} import ...")
            found += [
                f"{node.lineno}: from {node.module} import {a.name}" for a in node.names if _private(a.name)
            ]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "ultrassl" and any(_private(p) for p in parts):
                    found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
            and node.args[1].value not in own
        ):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def bench_trees() -> dict[Path, ast.AST]:
    return {p: ast.parse(p.read_text(), str(p)) for p in sorted(BENCH.rglob("*.py")) if "work" not in p.parts}


def test_bench_uses_only_public_names_of_ultrassl():
    trees = bench_trees()
    own = defined_names(list(trees.values()))
    found = [f"{p.relative_to(ROOT)}:{use}" for p, tree in trees.items() for use in private_uses(tree, own)]
    assert not found, "private names used by the bench:\n" + "\n".join(found)


def test_the_check_catches_private_imports_and_attributes():
    code = """
from ultrassl.confidence import _plan, confidence_map
from ultrassl._internal import thing
import ultrassl.data._x
from ultrassl import confidence
confidence._solve_batch(w)
trainer._train_step(batches)
getattr(trainer, "_read")(1)
obj.__class__
trainer._own_helper()
"""
    found = private_uses(ast.parse(code), own={"_own_helper"})
    assert sorted(found) == [  # neither the dunder nor the bench's own helper
        "2: from ultrassl.confidence import _plan",
        "3: from ultrassl._internal import ...",
        "4: import ultrassl.data._x",
        "6: confidence._solve_batch",
        "7: trainer._train_step",
        "8: getattr(trainer, '_read')",
    ]
