"""The generic PyTorch loop one trial runs: build optimizer + warmup + schedule, train, evaluate
every epoch, report to the pruner, and end cleanly on divergence.

It knows nothing of Ray, Optuna or MLflow: progress goes out through ``report`` (returns True
when the trial should stop) and ``on_epoch`` callbacks, so the same loop runs in tests, on Ray
workers and in users' notebooks.
"""

from __future__ import annotations

import math
import random
import socket
import time
from typing import Any, Callable

import numpy as np
import torch

from autoopt.core.catalog import get_optimizer
from autoopt.optimizers import build_optimizer, evaluation_mode, optimizer_state_bytes, set_optimizer_mode
from autoopt.core.record import EpochRecord, TrialOutcome
from autoopt.schedulers import build_schedule
from autoopt.space import TrialConfig
from autoopt.task import Task

#: A training loss this many times the first epoch's (or the first batches') loss is divergence.
EXPLOSION_FACTOR = 1e4

Report = Callable[[int, float], bool]
OnEpoch = Callable[[EpochRecord], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else the GPU this process was given (Ray sets CUDA_VISIBLE_DEVICES), else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class Diverged(Exception):
    """Training produced a non-finite or exploding loss; the message is the recorded reason."""


def train(
    task: Task,
    config: TrialConfig,
    *,
    report: Report | None = None,
    on_epoch: OnEpoch | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    epochs: int | None = None,
    eval_every_steps: int | None = None,
) -> TrialOutcome:
    """Train ``task`` with ``config``; never raises for a bad configuration, it returns a failed outcome.

    The validation metric is computed and reported after every epoch, or every
    ``eval_every_steps`` optimizer steps (then each evaluation is one pruner step).
    """
    started = time.perf_counter()
    dev = pick_device(device)
    host = socket.gethostname()
    spec = get_optimizer(config.optimizer)
    n_epochs = int(epochs or task.epochs)
    history: list[EpochRecord] = []
    maximize = task.direction == "maximize"
    best: float | None = None
    optimizer = None

    def outcome(status: str, reason: str | None = None, stopped: int | None = None) -> TrialOutcome:
        return TrialOutcome(
            status=status,  # type: ignore[arg-type]
            value=best,
            history=history,
            reason=reason,
            stopped_at_epoch=stopped,
            optimizer_state_bytes=optimizer_state_bytes(optimizer) if optimizer is not None else 0,
            device=str(dev) + (f":{torch.cuda.current_device()}" if dev.type == "cuda" else ""),
            host=host,
            seconds=time.perf_counter() - started,
        )

    try:
        seed_everything(seed)
        sparse = "sparse_gradients" in spec.requires
        model = task.build_model(sparse_gradients=sparse).to(dev)
        optimizer = build_optimizer(spec, model, dict(config.optimizer_params))
        train_loader, val_loader = task.loaders(config.batch_size)
        steps_per_epoch = max(len(train_loader), 1)
        schedule = build_schedule(
            optimizer,
            config.scheduler,
            dict(config.scheduler_params),
            warmup_fraction=config.warmup_fraction,
            total_steps=steps_per_epoch * n_epochs,
            steps_per_epoch=steps_per_epoch,
            direction=task.direction,
        )
    except Exception as exc:  # a configuration that cannot even be built is a failed trial
        return outcome("failed", f"setup failed: {type(exc).__name__}: {exc}")

    first_loss: float | None = None
    total_steps = steps_per_epoch * n_epochs
    n_reports = total_steps // eval_every_steps if eval_every_steps else n_epochs
    state = {"total": 0.0, "count": 0, "batch": 0, "t0": time.perf_counter()}

    def evaluate(epoch: int, global_step: int) -> bool:
        """Validate, record, report; True when the pruner says stop."""
        nonlocal best
        with evaluation_mode(optimizer):  # schedule-free: evaluate averaged weights
            metric = float(task.evaluate(model, val_loader, dev))
        if not math.isfinite(metric):
            raise Diverged(f"non-finite validation {task.metric} ({metric}) at epoch {epoch}")
        if dev.type == "cuda":
            torch.cuda.synchronize()
        record = EpochRecord(
            epoch=epoch,
            train_loss=state["total"] / max(state["count"], 1),
            val_metric=metric,
            lr=float(schedule.lr),
            seconds=time.perf_counter() - state["t0"],
            step=global_step if eval_every_steps else 0,
        )
        state.update(total=0.0, count=0, t0=time.perf_counter())
        history.append(record)
        if best is None or (metric > best if maximize else metric < best):
            best = metric
        if not eval_every_steps:
            schedule.step_epoch(metric)
        if on_epoch is not None:
            on_epoch(record)
        index = len(history)  # the pruner's step: epochs, or evaluations with eval_every_steps
        return report is not None and bool(report(index, metric)) and index < n_reports

    def forward_backward(batch: Any) -> torch.Tensor:
        """Loss and gradients (clipped when configured) of one batch."""
        optimizer.zero_grad(set_to_none=True)
        output, target = task.forward(model, batch, dev)
        loss = task.loss(output, target)
        state["batch"] = len(target)  # examples in this batch (L-BFGS may evaluate it several times)
        loss.backward()
        if config.grad_clip:
            params = [p for p in model.parameters() if p.grad is not None and not p.grad.is_sparse]
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        return loss

    model.train()
    global_step = 0
    try:
        for epoch in range(1, n_epochs + 1):
            set_optimizer_mode(optimizer, training=True)
            for step, batch in enumerate(train_loader):
                if spec.needs_closure:  # L-BFGS re-evaluates the batch inside step(); it returns the first loss
                    loss = optimizer.step(lambda: forward_backward(batch))
                else:
                    loss = forward_backward(batch)
                lv = float(loss.detach())
                if not math.isfinite(lv):
                    raise Diverged(f"non-finite training loss ({lv}) at epoch {epoch}, step {step}")
                if first_loss is None:
                    first_loss = max(abs(lv), 1e-8)
                elif abs(lv) > EXPLOSION_FACTOR * first_loss:
                    raise Diverged(
                        f"training loss exploded to {lv:.3g} (> {EXPLOSION_FACTOR:g}x the first loss "
                        f"{first_loss:.3g}) at epoch {epoch}, step {step}"
                    )
                if not spec.needs_closure:
                    optimizer.step()
                schedule.step_batch()
                global_step += 1
                state["total"] += lv * state["batch"]
                state["count"] += state["batch"]
                if eval_every_steps and global_step % eval_every_steps == 0 and evaluate(epoch, global_step):
                    return outcome("pruned", f"pruned by the pruner at evaluation {len(history)} "
                                             f"(epoch {epoch}, step {global_step})", stopped=len(history))
            if not eval_every_steps and evaluate(epoch, global_step):
                return outcome("pruned", f"pruned by the pruner after epoch {epoch}", stopped=epoch)
    except Diverged as exc:
        return outcome("failed", f"diverged: {exc}", stopped=len(history) + 1)
    except (RuntimeError, ValueError) as exc:
        return outcome("failed", f"error during training: {type(exc).__name__}: {exc}", stopped=len(history) + 1)
    return outcome("complete")
