"""Learning-rate schedules autoopt can choose from, and the linear warmup that composes with all of them.

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
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.optim import Optimizer
from torch.optim import lr_scheduler

from autoopt.catalog import HyperParam, resolve_hyperparams

#: Warmup starts at this fraction of the peak lr.
WARMUP_START_FACTOR = 0.01

DIRECTIONS = ("maximize", "minimize")


@dataclass(frozen=True)
class SchedulerSpec:
    """One LR schedule: its hyperparameters and when it steps (every batch or every epoch)."""

    name: str
    display: str
    hyperparams: tuple[HyperParam, ...]
    per: Literal["step", "epoch_metric"]
    guidance: str
    description: str

    @property
    def hp_names(self) -> tuple[str, ...]:
        return tuple(hp.name for hp in self.hyperparams)

    def defaults(self) -> dict[str, Any]:
        return {hp.name: hp.default for hp in self.hyperparams}

    def resolve(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """All hyperparameter values: ``params`` validated and typed, missing ones at defaults."""
        return resolve_hyperparams(f"scheduler {self.name!r}", self.hyperparams, params)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "display": self.display,
            "hyperparams": [hp.to_dict() for hp in self.hyperparams],
            "per": self.per,
            "guidance": self.guidance,
            "description": self.description,
        }


def _fraction(name: str, low: float, high: float, default: float, help: str, log: bool = False) -> HyperParam:
    return HyperParam(name, "float", low, high, log=log, default=default, help=help)


_GAMMA_STEP = HyperParam("gamma", "float", 0.05, 0.5, log=True, default=0.1, help="lr multiplier at each drop")
_ETA_MIN = HyperParam(
    "eta_min_ratio", "float", 1e-4, 0.1, log=True, default=0.0, allow_zero=True,
    help="final lr as a fraction of the peak (0: anneal to zero)",
)

SCHEDULERS: dict[str, SchedulerSpec] = {
    spec.name: spec
    for spec in (
        SchedulerSpec(
            "constant", "Constant", (), "step", "001",
            "Peak lr throughout (after warmup). Baseline; the schedule for schedule-free optimizers.",
        ),
        SchedulerSpec(
            "cosine", "Cosine annealing", (_ETA_MIN,), "step", "001, 003, AlgoPerf",
            "CosineAnnealingLR from the peak to eta_min over the run: for SGD/momentum (003); "
            "cosine + warmup was best in the LeNet/Fashion-MNIST example (001); NAdamW + warmup + cosine in AlgoPerf.",
        ),
        SchedulerSpec(
            "cosine_restarts", "Cosine with warm restarts",
            (
                HyperParam("n_cycles", "int", 2, 5, default=3,
                           help="cycles in the run; the first lasts run / (1 + t_mult + ... + t_mult^(n-1))"),
                HyperParam("t_mult", "categorical", choices=(1, 2), default=2, help="cycle length multiplier"),
                _ETA_MIN,
            ),
            "step", "003",
            "CosineAnnealingWarmRestarts (SGDR), a cyclic schedule for SGD (003); the first cycle is sized so "
            "the last cycle ends with the run (annealed, not just restarted).",
        ),
        SchedulerSpec(
            "linear", "Linear decay",
            (HyperParam("end_factor", "float", 1e-3, 0.1, log=True, default=0.01,
                        help="final lr as a fraction of the peak (AlgoPerf: 1e-3..1e-2)"),),
            "step", "003, AlgoPerf",
            "LinearLR from the peak to end_factor x peak: for Adam/RAdam (003); momentum + linear decay "
            "won AlgoPerf ImageNet ResNet-50, Nesterov + linear decay fastMRI and OGBG.",
        ),
        SchedulerSpec(
            "step", "Step decay",
            (_fraction("step_fraction", 0.1, 0.5, 0.3, "interval between drops as a fraction of the run"), _GAMMA_STEP),
            "step", "003",
            "StepLR: multiply by gamma every step_fraction of the run: for Adam/RAdam (003).",
        ),
        SchedulerSpec(
            "multistep", "Multi-step decay",
            (
                HyperParam("milestones", "categorical", choices=("0.5,0.75", "0.3,0.6,0.9", "0.33,0.67"),
                           default="0.5,0.75", help="drop points as fractions of the run"),
                _GAMMA_STEP,
            ),
            "step", "001",
            "MultiStepLR at fixed fractions of the run (multistep: 0.884 vs constant 0.882 in 001's example).",
        ),
        SchedulerSpec(
            "exponential", "Exponential decay",
            (HyperParam("gamma", "float", 0.5, 0.99, default=0.9, one_minus_log=True,
                        help="lr multiplier per epoch (applied smoothly per step)"),),
            "step", "001",
            "ExponentialLR with gamma per epoch, spread over the epoch's steps (001: beaten by polynomial for SGD).",
        ),
        SchedulerSpec(
            "inverse_sqrt", "Inverse square root",
            (_fraction("timescale_fraction", 0.005, 0.2, 0.05,
                       "decay timescale as a fraction of the run: lr = peak / sqrt(1 + t / timescale)", log=True),),
            "step", "001",
            "LambdaLR with peak / sqrt(1 + t / timescale): the transformer decay; beats exponential for SGD (001).",
        ),
        SchedulerSpec(
            "polynomial", "Polynomial decay",
            (HyperParam("power", "float", 0.5, 3.0, log=True, default=1.0, help="decay exponent (1: linear to 0)"),),
            "step", "001",
            "PolynomialLR from the peak to 0 over the run (001: polynomial beats exponential for SGD).",
        ),
        SchedulerSpec(
            "one_cycle", "One-cycle",
            (
                _fraction("pct_start", 0.1, 0.5, 0.3, "fraction of the (post-warmup) run spent ramping up"),
                HyperParam("div_factor", "float", 5.0, 100.0, log=True, default=25.0,
                           help="the ramp starts at peak / div_factor"),
                HyperParam("anneal_strategy", "categorical", choices=("cos", "linear"), default="cos",
                           help="shape of both phases"),
            ),
            "step", "003",
            "OneCycleLR (cyclic LR, 003) with momentum cycling off (the tuned momentum stays); "
            "ends at peak / (div_factor * 1e4). Its ramp absorbs the warmup.",
        ),
        SchedulerSpec(
            "plateau", "Reduce on plateau",
            (
                HyperParam("factor", "float", 0.1, 0.7, default=0.5, help="lr multiplier when the metric stalls (003: 0.5)"),
                HyperParam("patience", "int", 0, 10, default=2, help="epochs without improvement before a drop"),
            ),
            "epoch_metric", "003",
            "ReduceLROnPlateau on the validation metric (respecting the study direction), for any optimizer (003).",
        ),
    )
}


def get_scheduler(name: str) -> SchedulerSpec:
    """The scheduler spec ``name``; ValueError naming it and listing the allowed names otherwise."""
    try:
        return SCHEDULERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown scheduler {name!r}; allowed: {', '.join(SCHEDULERS)}") from None


def scheduler_table() -> list[dict[str, Any]]:
    """Every scheduler as a JSON-serialisable dict."""
    return [spec.to_dict() for spec in SCHEDULERS.values()]


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
    "SCHEDULERS",
    "SchedulerSpec",
    "WARMUP_START_FACTOR",
    "build_schedule",
    "get_scheduler",
    "scheduler_table",
]
