"""Optimizer recommender: the source documents' guidance as data, plus a scikit-learn model
learned from every study that has run. Imports here stay light (no torch), so answers are fast."""

from autoopt.recommend.recommender import recommend, suggest_configs, suggest_trials, top_optimizers

__all__ = ["recommend", "suggest_configs", "suggest_trials", "top_optimizers", "add_study_results"]


def add_study_results(*args, **kwargs):  # noqa: ANN002, ANN003 - thin lazy wrapper
    """Append a finished study's results to the meta-dataset (see :func:`autoopt.recommend.meta.add_study_results`)."""
    from autoopt.recommend.meta import add_study_results as _add

    return _add(*args, **kwargs)
