"""Optimizer recommender: the source documents' guidance as data, plus a scikit-learn model
learned from every study that has run. Imports here stay light (no torch), so answers are fast;
the recommender itself (numpy, the rule book) loads on first use, so a CLI command that only
registers ``recommend`` (``autoopt status``, ``best``, ``list``) does not pay for it."""

from typing import Any

__all__ = ["recommend", "suggest_configs", "suggest_trials", "top_optimizers", "add_study_results"]

_FROM_RECOMMENDER = ("recommend", "suggest_configs", "suggest_trials", "top_optimizers")


def __getattr__(name: str) -> Any:  # PEP 562: ``autoopt.recommend.recommend`` etc. on first use
    if name in _FROM_RECOMMENDER:
        from autoopt.recommend import recommender

        return getattr(recommender, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_study_results(*args, **kwargs):  # noqa: ANN002, ANN003 - thin lazy wrapper
    """Append a finished study's results to the meta-dataset (see :func:`autoopt.recommend.meta.add_study_results`)."""
    from autoopt.recommend.meta import add_study_results as _add

    return _add(*args, **kwargs)
