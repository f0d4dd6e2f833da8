"""Which import paths autoopt may import when the path was read back rather than typed by the user.

A spec is code: its ``task: pkg.module:Name`` is imported and called. That is the user's choice
when they typed it (a spec file, ``--task``, the Python API). A path read back from a study
storage (``autoopt resume``) was written by
whoever can write there: importing it would let any writer to a shared database run code on the
machine of the next person who resumes the study. Such a path is imported only if it is a
reference task or matches the user's allow-list (``$AUTOOPT_TRUSTED_TASKS`` or ``--trust-task``).

Every import of a read-back path goes through :func:`check_trusted`, so one function decides.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable

ENV_TRUSTED = "AUTOOPT_TRUSTED_TASKS"
#: The tasks autoopt ships (reference tasks, the zoo): as trusted as autoopt itself.
SHIPPED_TASKS = "autoopt.tasks.*"


class UntrustedImport(ValueError):
    """A read-back import path that is neither a reference task nor on the user's allow-list."""


def trusted_patterns(extra: Iterable[str] = ()) -> list[str]:
    """The allow-list: ``$AUTOOPT_TRUSTED_TASKS`` (comma- or space-separated) plus ``extra``."""
    env = re.split(r"[,\s]+", os.environ.get(ENV_TRUSTED, ""))
    return [p for p in (*env, *extra) if p]


def _matches(path: str, pattern: str) -> bool:
    """``pkg.mod:Name`` (exactly that object), ``pkg.mod`` (anything in that module) or
    ``pkg.*`` (anything in ``pkg`` and its submodules)."""
    module = path.partition(":")[0]
    if pattern.endswith(".*"):
        root = pattern[:-2]
        return module == root or module.startswith(root + ".")
    return path == pattern or (":" not in pattern and module == pattern)


def _reference_paths() -> dict[str, str]:
    from autoopt.task import REFERENCE_TASKS

    return REFERENCE_TASKS


def is_trusted(path: Any, extra: Iterable[str] = ()) -> bool:
    if not isinstance(path, str):
        return False
    references = _reference_paths()
    if path in references or path in references.values() or _matches(path, SHIPPED_TASKS):
        return True
    return any(_matches(path, p) for p in trusted_patterns(extra))


def check_trusted(path: Any, origin: str, extra: Iterable[str] = (), flag: str = "--trust-task",
                  what: str = "task") -> None:
    """Raise :class:`UntrustedImport` unless ``path`` (read from ``origin``) may be imported;
    ``what`` it names: a task, or a user's objective (the same rules)."""
    if is_trusted(path, extra):
        return
    raise UntrustedImport(
        f"{origin} names the {what} {path!r}; autoopt imports {'an' if what[0] in 'aeiou' else 'a'} {what} path read back from a storage or a "
        f"data file only if you trust it, since importing runs its code. If you trust whoever can write "
        f"to {origin}, pass {flag} {path} or set {ENV_TRUSTED}={path}"
    )


__all__ = ["ENV_TRUSTED", "UntrustedImport", "check_trusted", "is_trusted", "trusted_patterns"]
