"""autoopt: which optimizer, learning rate, betas, weight decay, warmup and LR schedule to train with.

Search (``run``/``submit`` a :class:`StudySpec`) and recommendation (``autoopt.recommend``).
Heavy imports (torch, ray, mlflow) happen on first use, so ``import autoopt`` stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "StudySpec": ("autoopt.spec", "StudySpec"),
    "SpaceSpec": ("autoopt.spec", "SpaceSpec"),
    "SpecError": ("autoopt.spec", "SpecError"),
    "Task": ("autoopt.task", "Task"),
    "TaskTraits": ("autoopt.core.traits", "TaskTraits"),
    "FunctionTask": ("autoopt.task", "FunctionTask"),
    "load_task": ("autoopt.task", "load_task"),
    "run": ("autoopt.study", "run"),
    "submit": ("autoopt.study", "submit"),
    "summarize": ("autoopt.study", "summarize"),
    "StudyResult": ("autoopt.study", "StudyResult"),
    "StudyHandle": ("autoopt.study", "StudyHandle"),
    "TrialConfig": ("autoopt.space", "TrialConfig"),
    "SearchSpace": ("autoopt.space", "SearchSpace"),
    "train": ("autoopt.train", "train"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'autoopt' has no attribute {name!r}")
