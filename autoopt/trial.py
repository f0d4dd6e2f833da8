"""What a user's objective gets: one trial's sampled configuration, its optimizer and schedule, and the line to the pruner.

An objective is ``def objective(trial: autoopt.Trial) -> float``: the user's own training loop
asks the trial for the optimizer and LR schedule the study sampled, reports a validation value
after each epoch (``trial.report`` raises :class:`TrialPruned` when the pruner says stop) and
returns the final value. A :class:`~autoopt.task.Task` is one way of writing an objective
(:func:`task_objective`): a Ray worker runs either through the same :meth:`Trial.run`, so both
get the same storage, pruning, retries and MLflow runs.

``Trial.fixed(config)`` is a trial outside any study (no pruner, nothing logged): to debug an
objective, or to train with the best configuration a study found (``autoopt best --format``).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import re
import socket
import time
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn
from torch.optim import lr_scheduler

from autoopt.core.record import EpochRecord, TrialOutcome
from autoopt.core.traits import TaskTraits
from autoopt.optimizers import build_optimizer, evaluation_mode
from autoopt.schedulers import LRSchedule, build_schedule
from autoopt.space import TrialConfig
from autoopt.task import gradient_stats, rms_trait

#: Is this pruning step the trial's last word? ``report(step, value)`` -> True: stop the trial.
PrunerCall = Callable[[int, float], bool]
OnRecord = Callable[[EpochRecord], None]


class TrialPruned(Exception):
    """Raised by :meth:`Trial.report` when the pruner stops the trial; let it propagate out of the objective."""


class ObjectiveError(ValueError):
    """An objective reference that cannot be used (bad import path, not callable, untrusted)."""


class Trial:
    """One trial of a study, as the user's training loop sees it.

    ``config`` is the sampled :class:`~autoopt.space.TrialConfig`; ``optimizer()`` and
    ``scheduler()`` build exactly what it says with autoopt's own builders (the ones a Task
    trains with), ``report()`` feeds the pruner, ``log_metrics()`` adds the user's metrics to
    the trial's MLflow run, ``traits()`` measures the model for the recommender.
    """

    def __init__(
        self,
        config: TrialConfig | Mapping[str, Any],
        *,
        number: int = 0,
        seed: int = 0,
        metric: str = "value",
        direction: str = "maximize",
        max_reports: int | None = None,
        device: Any = None,
        pruner: PrunerCall | None = None,
        on_record: OnRecord | None = None,
        logger: Any = None,
        on_traits: Callable[[TaskTraits], None] | None = None,
    ) -> None:
        self.config = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(dict(config))
        self.number = int(number)
        self.seed = int(seed)
        self.metric = metric
        self.direction = direction
        self.max_reports = max_reports
        self.device = device
        self.history: list[EpochRecord] = []
        self._pruner = pruner
        self._on_record = on_record
        self._logger = logger
        self._on_traits = on_traits
        self._optimizers: list[Any] = []
        self._schedulers: list[Any] = []
        self._last_report = time.perf_counter()

    @classmethod
    def fixed(cls, config: TrialConfig | Mapping[str, Any], **kwargs: Any) -> "Trial":
        """A trial with a given configuration outside any study: reports are recorded, nothing prunes."""
        return cls(config, **kwargs)

    # --- what was sampled -------------------------------------------------------------------
    @property
    def batch_size(self) -> int | None:
        """The sampled batch size, or None when the study's space does not search it."""
        return self.config.batch_size

    @property
    def grad_clip(self) -> float | None:
        """Max gradient norm to clip to before ``optimizer.step()``, or None for no clipping."""
        return self.config.grad_clip

    @property
    def params(self) -> dict[str, Any]:
        """The sampled values, flat and readable (``optimizer``, ``adamw.lr``, ``scheduler``, ...)."""
        return self.config.flat_params()

    # --- building the optimizer and schedule ------------------------------------------------
    def optimizer(self, model_or_params: Any) -> Any:
        """The sampled optimizer over a model (preferred: biases and norms get no weight decay, Muon
        finds its hidden matrices) or an iterable of parameters."""
        model = model_or_params if isinstance(model_or_params, nn.Module) else _Parameters(model_or_params)
        optimizer = build_optimizer(self.config.optimizer, model, dict(self.config.optimizer_params))
        self._optimizers.append(optimizer)
        return optimizer

    def scheduler(self, optimizer: Any, *, total_steps: int, steps_per_epoch: int | None = None) -> Any:
        """The sampled LR schedule with its warmup, as a torch ``LRScheduler``: call ``step()`` after
        every ``optimizer.step()``; ``report()`` feeds the validation value to ``plateau``.

        ``total_steps``: optimizer steps in the whole run; ``steps_per_epoch`` (default: the run
        split into ``max_reports`` epochs) sets the epoch of per-epoch decays (``exponential``).
        """
        if steps_per_epoch is None:
            steps_per_epoch = max(1, int(total_steps) // max(1, self.max_reports or 1))
        schedule = build_schedule(
            optimizer, self.config.scheduler, dict(self.config.scheduler_params),
            warmup_fraction=self.config.warmup_fraction, total_steps=int(total_steps),
            steps_per_epoch=int(steps_per_epoch), direction=self.direction,
        )
        scheduler = TrialScheduler(schedule)
        self._schedulers.append(scheduler)
        return scheduler

    def clip_gradients(self, model_or_params: Any) -> None:
        """Clip gradients to ``grad_clip`` (no-op when the study does not clip)."""
        if not self.grad_clip:
            return
        params = model_or_params.parameters() if isinstance(model_or_params, nn.Module) else model_or_params
        dense = [p for p in params if p.grad is not None and not p.grad.is_sparse]
        torch.nn.utils.clip_grad_norm_(dense, self.grad_clip)

    def evaluating(self) -> contextlib.AbstractContextManager[None]:
        """Evaluate (and save weights) inside ``with trial.evaluating():``. A schedule-free
        optimizer (Schedule-Free AdamW, which a study may sample and the recommender often ranks
        first) trains at interpolated weights and must be evaluated at its averaged ones: this
        switches the trial's optimizers to them and back to training after the block, as
        autoopt's own loop does; for every other optimizer it does nothing."""
        return evaluation_mode(*self._optimizers)

    # --- talking to the study ---------------------------------------------------------------
    def report(self, value: float, step: int | None = None, *, train_loss: float | None = None) -> None:
        """Record the validation value at ``step`` (default: the next one, 1, 2, ...); raises
        :class:`TrialPruned` when the pruner stops the trial. A plateau schedule steps on it."""
        value = float(value)
        step = len(self.history) + 1 if step is None else int(step)
        if self.history and self.history[-1].epoch == step:
            return  # a step is reported once (as in Optuna): e.g. a final evaluation after the last epoch's
        if not math.isfinite(value):
            raise ValueError(f"reported {self.metric} is not finite ({value}) at step {step}")
        now = time.perf_counter()
        record = EpochRecord(
            epoch=step, train_loss=None if train_loss is None else float(train_loss),  # type: ignore[arg-type]
            val_metric=value, lr=self._lr(), seconds=now - self._last_report,
        )
        self._last_report = now
        for scheduler in self._schedulers:
            scheduler.schedule.step_epoch(value)
        self.record(record)
        if self.should_stop(step, value):
            raise TrialPruned(f"pruned by the pruner at step {step} ({self.metric}={value:.6g})")

    def record(self, record: EpochRecord) -> None:
        """One point of the learning curve: kept for the outcome and logged to the trial's MLflow run."""
        self.history.append(record)
        if self._on_record is not None:
            self._on_record(record)

    def should_stop(self, step: int, value: float) -> bool:
        """Ask the pruner about ``value`` at ``step`` (False outside a study)."""
        return bool(self._pruner is not None and self._pruner(step, value))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Add the user's own metrics to the trial's MLflow run (no-op outside a tracked study)."""
        if self._logger is not None:
            self._logger.log_metrics(dict(metrics), step=len(self.history) if step is None else int(step))

    def traits(self, model: Any, example_batch: Any, loss_fn: Callable[..., Any] | None = None, *,
               domain: str = "other", dataset_size: int | None = None) -> TaskTraits:
        """Measure the task's traits (parameters, batch size, gradient sparsity and RMS gradient
        entry from one backward pass: call it before training, as a Task measures them at init)
        and store them with the study, so the recommender learns about this model.

        ``example_batch``: ``(inputs..., target)`` with ``loss_fn(output, target)``; without
        ``loss_fn``, the model's call on the batch (a dict is passed as keywords) must give a
        loss (a scalar, or an output with ``.loss`` as Hugging Face models return).
        """
        traits = measure_traits(model, example_batch, loss_fn, domain=domain, dataset_size=dataset_size,
                                metric=self.metric, direction=self.direction)
        if self._on_traits is not None:
            self._on_traits(traits)
        return traits

    # --- running an objective ------------------------------------------------------------------
    def run(self, objective: Callable[["Trial"], Any]) -> TrialOutcome:
        """Run ``objective`` on this trial; never raises for a bad configuration or a failing
        objective: pruned and failed trials are outcomes with a reason."""
        started = time.perf_counter()
        try:
            result = objective(self)
        except TrialPruned as exc:
            return self._outcome("pruned", str(exc) or "pruned by the pruner", started, stopped=len(self.history))
        except Exception as exc:  # noqa: BLE001 - the user's code failing is this trial's outcome
            return self._outcome("failed", f"error in the objective: {type(exc).__name__}: {exc}", started,
                                 stopped=len(self.history) + 1)
        if isinstance(result, TrialOutcome):  # a Task's loop reports its own outcome
            return result
        try:
            value = float(result)
        except (TypeError, ValueError):
            return self._outcome("failed", f"the objective returned {type(result).__name__}, not a number", started)
        if not math.isfinite(value):
            return self._outcome("failed", f"the objective returned a non-finite {self.metric} ({value})", started)
        return self._outcome("complete", None, started, value=value)

    def _outcome(self, status: str, reason: str | None, started: float, *, value: float | None = None,
                 stopped: int | None = None) -> TrialOutcome:
        from autoopt.optimizers import optimizer_state_bytes

        if value is None and self.history:  # pruned/failed: the best value seen, as a Task records it
            values = [r.val_metric for r in self.history]
            value = max(values) if self.direction == "maximize" else min(values)
        device = str(self.device) if self.device is not None else "cpu"
        return TrialOutcome(
            status=status,  # type: ignore[arg-type]
            value=value, history=list(self.history), reason=reason, stopped_at_epoch=stopped,
            optimizer_state_bytes=sum(optimizer_state_bytes(o) for o in self._optimizers),
            device=device, host=socket.gethostname(), seconds=time.perf_counter() - started,
        )

    def _lr(self) -> float:
        for optimizer in self._optimizers:
            return float(optimizer.param_groups[0]["lr"])
        return float("nan")

    def __repr__(self) -> str:
        return f"Trial(number={self.number}, config={self.config!r})"


class _Parameters(nn.Module):
    """Bare parameters as a module, for the builders that take a model."""

    def __init__(self, params: Iterable[Any]) -> None:
        super().__init__()
        items = list(params)
        if items and isinstance(items[0], dict):
            raise TypeError("trial.optimizer takes a model or an iterable of parameters, not param-group dicts: "
                            "the sampled optimizer makes its own groups (weight decay off for biases and norms)")
        self.held = nn.ParameterList(items)


class TrialScheduler(lr_scheduler.LRScheduler):
    """autoopt's warmup + schedule (:class:`~autoopt.schedulers.LRSchedule`) behind torch's scheduler
    API, which Lightning and Hugging Face's Trainer check for: ``step()`` once per optimizer step."""

    def __init__(self, schedule: LRSchedule) -> None:  # no super().__init__: the schedule has set the lrs
        self.schedule = schedule
        self.optimizer = schedule.optimizer
        self.base_lrs = [float(g.get("initial_lr", g["lr"])) for g in self.optimizer.param_groups]
        self.last_epoch = schedule.steps_taken
        self._last_lr = schedule.lrs

    def step(self, epoch: int | None = None) -> None:
        self.schedule.step_batch()
        self.last_epoch = self.schedule.steps_taken
        self._last_lr = self.schedule.lrs

    def get_lr(self) -> list[float]:
        return self.schedule.lrs

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        inner, plateau = self.schedule._per_step, self.schedule._plateau
        return {"steps_taken": self.schedule.steps_taken,
                "per_step": inner.state_dict() if inner is not None else None,
                "plateau": plateau.state_dict() if plateau is not None else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.schedule.steps_taken = int(state_dict["steps_taken"])
        if state_dict.get("per_step") is not None and self.schedule._per_step is not None:
            self.schedule._per_step.load_state_dict(state_dict["per_step"])
        if state_dict.get("plateau") is not None and self.schedule._plateau is not None:
            self.schedule._plateau.load_state_dict(state_dict["plateau"])
        self.last_epoch = self.schedule.steps_taken
        self._last_lr = self.schedule.lrs


# --- measuring a user's model ------------------------------------------------------------------
def measure_traits(model: Any, example_batch: Any, loss_fn: Callable[..., Any] | None = None, *,
                   domain: str = "other", dataset_size: int | None = None, metric: str | None = None,
                   direction: str | None = None) -> TaskTraits:
    """TaskTraits of a model from one forward/backward pass on ``example_batch`` (gradients cleared after)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    def to(x: Any) -> Any:
        return x.to(device) if isinstance(x, torch.Tensor) else x

    model.zero_grad(set_to_none=True)
    if isinstance(example_batch, Mapping):
        batch = {k: to(v) for k, v in example_batch.items()}
        output = model(**batch)
        first = next(iter(batch.values()))
    else:
        items = [to(x) for x in (example_batch if isinstance(example_batch, (tuple, list)) else [example_batch])]
        first = items[0]
        if loss_fn is not None:
            *inputs, target = items
            output = loss_fn(model(*inputs), target)
        else:
            output = model(*items)
    loss = output if isinstance(output, torch.Tensor) and output.ndim == 0 else getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        raise ValueError("trial.traits: the model's output on example_batch has no loss; pass loss_fn(output, target) "
                         "with example_batch = (inputs..., target)")
    loss.backward()
    zeros, total, square, sparse = gradient_stats(model)
    model.zero_grad(set_to_none=True)
    rms = math.sqrt(square / total) if total else 0.0
    batch_size = int(first.shape[0]) if isinstance(first, torch.Tensor) and first.ndim > 0 else None
    return TaskTraits(
        domain=domain, batch_size=batch_size, grad_sparsity=round(zeros / total, 4) if total else 0.0,
        n_params=sum(p.numel() for p in model.parameters()), dataset_size=dataset_size,
        metric=metric, direction=direction, sparse_gradients=sparse,
        grad_rms=rms_trait(rms),
    )


# --- naming an objective ------------------------------------------------------------------------
_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def load_objective(ref: Any) -> Callable[[Trial], Any]:
    """The objective function of ``ref``: a callable, or an import path ``pkg.module:function``."""
    if callable(ref):
        return ref
    if not isinstance(ref, str) or not _PATH.match(ref):
        raise ObjectiveError(f"objective {ref!r} must be a callable or an import path 'package.module:function'")
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ObjectiveError(f"cannot import the objective's module {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ObjectiveError(f"module {module_name!r} has no attribute {attr!r} (objective {ref!r})")
    if not callable(target):
        raise ObjectiveError(f"objective {ref!r} is a {type(target).__name__}, not a function taking a trial")
    return target


def task_objective(task: Any, eval_every_steps: int | None = None) -> Callable[[Trial], TrialOutcome]:
    """A Task as an objective: autoopt's own training loop on the trial's configuration."""

    def objective(trial: Trial) -> TrialOutcome:
        from autoopt.train import train

        return train(task, trial.config, report=trial.should_stop, on_epoch=trial.record, device=trial.device,
                     seed=trial.seed, eval_every_steps=eval_every_steps)

    objective.__qualname__ = f"task_objective({getattr(task, 'name', type(task).__name__)})"
    return objective


__all__ = [
    "ObjectiveError",
    "Trial",
    "TrialPruned",
    "TrialScheduler",
    "load_objective",
    "measure_traits",
    "task_objective",
]
