"""Normalised regret per task: what the recommender learns and how it is judged.

Every task of the meta-dataset (a zoo instance, or a user's study) is a grid of
(optimizer, lr) configurations trained with a few seeds. Regret is normalised per task so no
task's units dominate a mean: 0 = the task's best configuration (mean over seeds), 1 = the
median of its grid, and a diverged or failed run counts as :data:`CAP` (also the most any run
counts for). A configuration's regret is the mean of its seeds'.

:func:`lookup` answers "what would this lr have given on this task": linear interpolation in
log10 lr between the two grid points around it; within :data:`EDGE_DECADES` outside the swept
range the edge point's value, further out :data:`CAP` (the grid was chosen to hold the good
lrs, so far outside it is a miss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from autoopt.recommend.sweep import BASELINES

#: Normalised regret of a diverged / failed run, and the cap on every run's regret.
CAP = 3.0
#: How far (decades) outside a task's swept lr range a lookup still takes the edge point's value.
EDGE_DECADES = 0.5
#: Trait columns of a task (the model's inputs besides optimizer and lr).
TRAIT_COLUMNS: tuple[str, ...] = ("domain", "batch_size", "grad_sparsity", "n_params", "dataset_size", "sparse_gradients",
                                  "grad_rms")


@dataclass
class Curve:
    """One optimizer's grid on one task: log10 lrs (sorted), normalised and raw regret per lr."""

    log_lr: np.ndarray
    regret: np.ndarray
    raw: np.ndarray

    @property
    def best(self) -> tuple[float, float, float]:
        """(lr, normalised regret, raw regret) of the optimizer's best grid point (tuned)."""
        i = int(np.argmin(self.regret))
        return float(10 ** self.log_lr[i]), float(self.regret[i]), float(self.raw[i])


@dataclass
class TaskGrid:
    """A task's traits and its optimizers' regret curves."""

    instance: str
    family: str
    traits: dict[str, Any]
    metric: str | None
    direction: str
    best_value: float
    median_value: float
    curves: dict[str, Curve] = field(default_factory=dict)
    #: fixed baseline configurations (:data:`autoopt.recommend.sweep.BASELINES`), normalised like
    #: the grid but outside it: not in its best or median, not training data
    baselines: dict[str, Curve] = field(default_factory=dict)

    def curve(self, optimizer: str) -> Curve:
        """The optimizer's curve on this task: its grid's, or a baseline's."""
        curve = self.curves.get(optimizer, self.baselines.get(optimizer))
        if curve is None:
            raise KeyError(f"{self.instance} has no runs of {optimizer!r}")
        return curve

    def lookup(self, optimizer: str, lr: float | None) -> tuple[float, float]:
        """(normalised, raw) regret of ``optimizer`` at ``lr`` on this task (see the module docstring)."""
        curve = self.curve(optimizer)
        worst_raw = float(np.nanmax(np.concatenate([c.raw for c in self.curves.values()])))
        if lr is None or not (lr > 0) or not math.isfinite(lr):
            return CAP, worst_raw
        x = math.log10(lr)
        return (float(interpolate(curve.log_lr, curve.regret, x)),
                float(interpolate(curve.log_lr, curve.raw, x, outside=worst_raw)))

    def tuned(self, optimizer: str) -> tuple[float, float]:
        """(normalised, raw) regret of ``optimizer`` at its best grid lr."""
        _, norm, raw = self.curve(optimizer).best
        return norm, raw

    @property
    def best_optimizer(self) -> str:
        return min(self.curves, key=lambda o: (self.curves[o].best[1], o))


def interpolate(log_lr: np.ndarray, values: np.ndarray, x: Any, outside: float = CAP) -> np.ndarray:
    """``values`` (on the sorted grid ``log_lr``) at log10 lr ``x`` (scalar or array): linear in
    log lr inside the grid, the edge value within EDGE_DECADES outside it, ``outside`` further out."""
    x = np.asarray(x, dtype=float)
    lo, hi = log_lr[0], log_lr[-1]
    inside = (x >= lo - EDGE_DECADES - 1e-9) & (x <= hi + EDGE_DECADES + 1e-9)
    return np.where(inside, np.interp(x, log_lr, values), outside)


def task_grids(table: Any) -> dict[str, TaskGrid]:
    """Per-task grids from a runs table (pandas DataFrame, one row per run: instance, family,
    trait columns, metric, direction, optimizer, lr, seed, status, value)."""
    grids: dict[str, TaskGrid] = {}
    for instance, runs in table.groupby("instance", sort=True):
        grid = _task_grid(str(instance), runs)
        if grid is not None:
            grids[grid.instance] = grid
    return grids


def _task_grid(instance: str, runs: Any) -> TaskGrid | None:
    first = runs.iloc[0]
    direction = str(first.get("direction") or "maximize")
    sign = 1.0 if direction == "maximize" else -1.0
    ok = (runs["status"] == "ok") & np.isfinite(runs["value"].astype(float))
    signed = np.where(ok, sign * runs["value"].astype(float), np.nan)
    runs = runs.assign(_signed=signed, _ok=ok, _loglr=np.round(np.log10(runs["lr"].astype(float)), 6))
    configs = runs.groupby(["optimizer", "_loglr"], sort=True).agg(mean=("_signed", "mean"), all_ok=("_ok", "all"))
    is_baseline = configs.index.get_level_values(0).isin(list(BASELINES))
    grid_configs = configs[~is_baseline]
    finished = grid_configs[grid_configs["all_ok"]]
    if finished.empty:
        return None
    best = float(finished["mean"].max())
    ranked = np.where(grid_configs["all_ok"], grid_configs["mean"], -np.inf)
    median = float(np.median(ranked))
    if not math.isfinite(median):  # more than half the grid diverged: the median finished run
        median = float(np.median(finished["mean"]))
    span = best - median
    if not span > 0:
        span = max(abs(best), 1.0) * 1e-3
    worst_finished = float(finished["mean"].min())
    runs = runs.assign(_regret=np.where(runs["_ok"], np.clip((best - runs["_signed"]) / span, 0.0, CAP), CAP))
    per_config = runs.groupby(["optimizer", "_loglr"], sort=True).agg(regret=("_regret", "mean"))
    per_config = per_config.join(configs)
    curves: dict[str, Curve] = {}
    baselines: dict[str, Curve] = {}
    for opt, sub in per_config.groupby(level=0, sort=True):
        log_lr = sub.index.get_level_values(1).to_numpy(dtype=float)
        raw = np.where(sub["all_ok"], best - sub["mean"], best - worst_finished).astype(float)
        curve = Curve(log_lr, sub["regret"].to_numpy(dtype=float), np.maximum(raw, 0.0))
        (baselines if opt in BASELINES else curves)[str(opt)] = curve
    traits = {c: _plain(first.get(c)) for c in TRAIT_COLUMNS}
    traits["sparse_gradients"] = bool(traits.get("sparse_gradients"))
    return TaskGrid(
        instance=instance,
        family=str(first.get("family") or instance),
        traits=traits,
        metric=_plain(first.get("metric")),
        direction=direction,
        best_value=sign * best,
        median_value=sign * median,
        curves=curves,
        baselines=baselines,
    )


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def training_rows(grids: Mapping[str, TaskGrid] | Iterable[TaskGrid]) -> list[dict[str, Any]]:
    """One row per (task, optimizer, grid lr): the task's traits, optimizer, lr and regret (the model's data)."""
    items = grids.values() if isinstance(grids, Mapping) else grids
    rows = []
    for g in items:
        for opt, c in g.curves.items():
            for x, r in zip(c.log_lr, c.regret):
                rows.append({**g.traits, "instance": g.instance, "family": g.family, "optimizer": opt,
                             "lr": float(10 ** x), "regret": float(r)})
    return rows
