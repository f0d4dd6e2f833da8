"""Build a trial's learning-rate schedule: a catalog schedule plus the linear warmup that composes with all of them.

The schedules themselves (names, hyperparameters, ranges) are data in :mod:`autoopt.core.catalog`.

Step-based schedules are defined in *fractions of the training run* (``total_steps`` optimizer
steps), so one configuration works for any epoch count or dataset size.  They are built from
``torch.optim.lr_scheduler`` classes; a schedule multiplies every param group's own peak lr,
so optimizers with several lrs (Muon's AdamW groups) keep their ratios.

Warmup (GUIDANCE: linear ramp from a small lr, works with any scheduler, keep it <= 10% of
steps): ``LinearLR`` from :data:`WARMUP_START_FACTOR` x peak to the peak over
``round(warmup_fraction * total_steps)`` steps, then the schedule runs over the remaining
steps (``SequentialLR``).  Two schedules compose differently:

* ``one_cycle`` has its own warm-up phase, so the warmup merges into it instead of being
  prepended: the one-cycle ramp (from ``peak / div_factor``) covers the warmup steps plus
  ``pct_start`` of the remaining ones.
* ``plateau`` (``ReduceLROnPlateau``) runs per epoch on the validation metric; the warmup runs
  per step before it; epochs that end inside (or right at the end of) the warmup are not fed to it.

:class:`LRSchedule` is what the train loop holds: ``step_batch()`` after every
``optimizer.step()``, ``step_epoch(val_metric)`` after every validation.  After
``total_steps`` batch steps the lr stays at its final value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim import lr_scheduler

from autoopt.core.catalog import get_scheduler
from autoopt.core.traits import DIRECTIONS

#: Warmup starts at this fraction of the peak lr.
WARMUP_START_FACTOR = 0.01


# --------------------------------------------------------------------------------------
# The schedule object the train loop drives
# --------------------------------------------------------------------------------------
class LRSchedule:
    """Wraps torch schedulers; warmup composes with every scheduler.

    Built by :func:`build_schedule`.  ``step_batch()`` after every ``optimizer.step()``,
    ``step_epoch(val_metric)`` after each epoch's validation; ``lr`` is the current lr of the
    first param group.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        name: str,
        *,
        total_steps: int,
        warmup_steps: int,
        per_step: lr_scheduler.LRScheduler | None,
        plateau: lr_scheduler.ReduceLROnPlateau | None = None,
        plateau_after: int = 0,
    ) -> None:
        self.optimizer = optimizer
        self.name = name
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.steps_taken = 0
        self._per_step = per_step
        self._per_step_limit = plateau_after if plateau is not None else total_steps
        self._plateau = plateau

    def step_batch(self) -> None:
        """Advance one optimizer step (no-op past the end of the schedule)."""
        self.steps_taken += 1
        if self._per_step is not None and self.steps_taken <= self._per_step_limit:
            self._per_step.step()

    def step_epoch(self, val_metric: float) -> None:
        """Feed the epoch's validation metric (only ``plateau`` uses it; epochs within the warmup are skipped)."""
        if self._plateau is not None and self.steps_taken > self.warmup_steps:
            self._plateau.step(float(val_metric))

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def lrs(self) -> list[float]:
        """Current lr of every param group."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def __repr__(self) -> str:
        return (
            f"LRSchedule({self.name!r}, lr={self.lr:.3g}, step={self.steps_taken}/{self.total_steps}, "
            f"warmup_steps={self.warmup_steps})"
        )


class _ShadowFactor:
    """``t -> lr(t) / peak`` of a torch scheduler run on a one-parameter shadow optimizer at lr 1.

    Lets schedulers with an *absolute* floor (``eta_min``) drive several param groups with
    different peak lrs as a relative factor through ``LambdaLR``.
    """

    def __init__(self, make: Callable[[Optimizer], lr_scheduler.LRScheduler]) -> None:
        self._opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        self._opt._opt_called = True  # type: ignore[attr-defined]  # never stepped: silence the order warning
        self._sched = make(self._opt)
        self._values = [float(self._opt.param_groups[0]["lr"])]

    def __call__(self, t: int) -> float:
        while len(self._values) <= t:
            self._sched.step()
            self._values.append(float(self._opt.param_groups[0]["lr"]))
        return self._values[t]


def _same_lr(optimizer: Optimizer) -> bool:
    return len({float(g["lr"]) for g in optimizer.param_groups}) == 1


def _main_schedule(optimizer: Optimizer, name: str, v: dict[str, Any], steps: int, steps_per_epoch: int) -> lr_scheduler.LRScheduler:
    """The post-warmup schedule over ``steps`` steps (``steps >= 1``)."""
    if name == "constant":
        return lr_scheduler.LambdaLR(optimizer, lambda _t: 1.0)
    if name in ("cosine", "cosine_restarts"):
        if name == "cosine":
            make = lambda opt, eta: lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=eta)  # noqa: E731
        else:
            mult = int(v["t_mult"])
            # +1: the run's end (t = steps) falls inside the last cycle, not on a restart.
            t0 = max(1, math.ceil((steps + 1) / sum(mult**i for i in range(v["n_cycles"]))))
            make = lambda opt, eta: lr_scheduler.CosineAnnealingWarmRestarts(  # noqa: E731
                opt, T_0=t0, T_mult=mult, eta_min=eta
            )
        ratio = v["eta_min_ratio"]
        if ratio == 0 or _same_lr(optimizer):
            return make(optimizer, ratio * float(optimizer.param_groups[0]["lr"]))
        factor = _ShadowFactor(lambda opt: make(opt, ratio))
        return lr_scheduler.LambdaLR(optimizer, factor)
    if name == "linear":
        return lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=v["end_factor"], total_iters=steps)
    if name == "step":
        return lr_scheduler.StepLR(optimizer, step_size=max(1, round(v["step_fraction"] * steps)), gamma=v["gamma"])
    if name == "multistep":
        fractions = [float(f) for f in str(v["milestones"]).split(",")]
        milestones = sorted({max(1, round(f * steps)) for f in fractions})
        return lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=v["gamma"])
    if name == "exponential":
        return lr_scheduler.ExponentialLR(optimizer, gamma=v["gamma"] ** (1.0 / steps_per_epoch))
    if name == "inverse_sqrt":
        timescale = max(1.0, v["timescale_fraction"] * steps)
        return lr_scheduler.LambdaLR(optimizer, lambda t: 1.0 / math.sqrt(1.0 + t / timescale))
    if name == "polynomial":
        return lr_scheduler.PolynomialLR(optimizer, total_iters=steps, power=v["power"])
    raise AssertionError(f"no step schedule for {name!r}")  # pragma: no cover - guarded by get_scheduler


def build_schedule(
    optimizer: Optimizer,
    name: str,
    params: Mapping[str, Any] | None,
    *,
    warmup_fraction: float,
    total_steps: int,
    steps_per_epoch: int,
    direction: str = "maximize",
) -> LRSchedule:
    """The LR schedule ``name`` with ``params`` (missing ones at defaults) and linear warmup.

    ``total_steps``: optimizer steps in the whole run (epochs x steps_per_epoch);
    ``warmup_fraction`` in [0, 1): share of them spent warming up; ``direction``: whether the
    validation metric is maximised or minimised (``plateau``).
    """
    spec = get_scheduler(name)
    values = spec.resolve(params)
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be an integer >= 1, got {steps_per_epoch!r}")
    if not (isinstance(warmup_fraction, (int, float)) and 0.0 <= warmup_fraction < 1.0):
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{type(optimizer).__name__} is not a torch.optim.Optimizer")

    warmup = int(round(warmup_fraction * total_steps))
    if warmup_fraction > 0 and warmup == 0:
        warmup = 1
    warmup = min(warmup, total_steps - 1)

    if name == "one_cycle":
        # The one-cycle ramp absorbs the warmup: it spans the warmup plus pct_start of the rest.
        pct = (warmup + values["pct_start"] * (total_steps - warmup)) / total_steps
        sched = lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[float(g["lr"]) for g in optimizer.param_groups],
            total_steps=total_steps + 1,  # +1: after total_steps steps the lr is the final value
            pct_start=min(pct, 0.99),
            anneal_strategy=values["anneal_strategy"],
            div_factor=values["div_factor"],
            cycle_momentum=False,
        )
        return LRSchedule(optimizer, name, total_steps=total_steps, warmup_steps=warmup, per_step=sched)

    warm = (
        lr_scheduler.LinearLR(optimizer, start_factor=WARMUP_START_FACTOR, end_factor=1.0, total_iters=warmup)
        if warmup > 0
        else None
    )

    if spec.per == "epoch_metric":
        plateau = lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="max" if direction == "maximize" else "min",
            factor=values["factor"],
            patience=values["patience"],
            # Any improvement counts: torch's default relative threshold (1e-4) inverts for
            # negative metrics (e.g. negated losses), where stalls would never be detected.
            threshold=0.0,
        )
        return LRSchedule(
            optimizer, name, total_steps=total_steps, warmup_steps=warmup,
            per_step=warm, plateau=plateau, plateau_after=warmup,
        )

    if warm is None:
        main = _main_schedule(optimizer, name, values, total_steps, steps_per_epoch)
        return LRSchedule(optimizer, name, total_steps=total_steps, warmup_steps=0, per_step=main)
    # The main schedule's constructor must see the peak lr (LinearLR already scaled it down).
    peak = [g["initial_lr"] for g in optimizer.param_groups]
    scaled = [g["lr"] for g in optimizer.param_groups]
    for g, p in zip(optimizer.param_groups, peak):
        g["lr"] = p
    main = _main_schedule(optimizer, name, values, total_steps - warmup, steps_per_epoch)
    for g, s in zip(optimizer.param_groups, scaled):
        g["lr"] = s
    seq = lr_scheduler.SequentialLR(optimizer, schedulers=[warm, main], milestones=[warmup])
    return LRSchedule(optimizer, name, total_steps=total_steps, warmup_steps=warmup, per_step=seq)


__all__ = [
    "LRSchedule",
    "WARMUP_START_FACTOR",
    "build_schedule",
]
