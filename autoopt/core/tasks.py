"""Reference task names and their import paths, in a module that imports no torch: a spec is
checked, and a driver starts Ray, before the task's module (and torch) is imported."""

from __future__ import annotations

#: Reference task names -> import paths (the modules in the top-level ``tasks/`` folder).
REFERENCE_TASKS: dict[str, str] = {
    "cv": "autoopt.tasks.cv:DigitsCNN",
    "tabular": "autoopt.tasks.tabular:DiabetesMLP",
    "nlp": "autoopt.tasks.nlp:ZipfTextClassification",
    "recsys": "autoopt.tasks.recsys:ImplicitMF",
}

__all__ = ["REFERENCE_TASKS"]
