"""Reference task names and their import paths, and whether a task reference will load, in a
module that imports no torch: a spec is checked, and a driver starts Ray, before the task's module
(and torch) is imported."""

from __future__ import annotations

import ast
import importlib.util
from typing import Any

#: Reference task names -> import paths (the modules in the top-level ``tasks/`` folder).
REFERENCE_TASKS: dict[str, str] = {
    "cv": "autoopt.tasks.cv:DigitsCNN",
    "tabular": "autoopt.tasks.tabular:DiabetesMLP",
    "nlp": "autoopt.tasks.nlp:ZipfTextClassification",
    "recsys": "autoopt.tasks.recsys:ImplicitMF",
}


def resolvable(ref: Any) -> bool:
    """Whether a task or objective reference will likely load: an object, a reference task's name,
    or an import path whose module's source defines the name (read, not run). Ray is started
    early only for these, so a misspelt name fails at once instead of after a Ray start it did
    not need (the process then waits for that start to end before it exits)."""
    if ref is None:
        return False
    if not isinstance(ref, str):
        return True
    if ref in REFERENCE_TASKS:
        return True
    module, _, attr = ref.partition(":")
    if not (module and attr):
        return False
    try:
        found = importlib.util.find_spec(module)
        if found is None or not str(found.origin or "").endswith(".py"):
            return False
        with open(found.origin, encoding="utf-8") as source:
            tree = ast.parse(source.read())
    except (ImportError, ValueError, OSError, SyntaxError):
        return False
    return attr in _top_level_names(tree.body)


def _top_level_names(body: list[Any]) -> set[str]:
    """Names a module's top level binds: classes, functions, assignments and imports, also
    inside top-level ``if`` and ``try`` blocks."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
        elif isinstance(node, ast.If):
            names |= _top_level_names(node.body) | _top_level_names(node.orelse)
        elif isinstance(node, ast.Try):
            names |= _top_level_names(node.body) | _top_level_names(node.orelse) | _top_level_names(node.finalbody)
            for handler in node.handlers:
                names |= _top_level_names(handler.body)
    return names


__all__ = ["REFERENCE_TASKS", "resolvable"]
