"""A trial inside PyTorch Lightning: the optimizer and schedule from ``configure_optimizers``, and a callback that reports and prunes.

    class Net(L.LightningModule):
        def __init__(self, trial): ...; self.trial = trial
        def configure_optimizers(self):
            return autoopt_lightning.configure_optimizers(self.trial, self)

    trainer = L.Trainer(max_epochs=5, callbacks=[autoopt_lightning.TrialCallback(trial, monitor="val_acc")])
    trainer.fit(net, train_loader, val_loader)      # raises autoopt.TrialPruned when pruned
    return trainer.callback_metrics["val_acc"].item()

Needs the ``lightning`` package (``pip install 'autoopt[lightning]'``); ``pytorch_lightning`` works too.
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the older package name
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as exc:
        raise ImportError("autoopt.integrations.lightning needs PyTorch Lightning: pip install 'autoopt[lightning]'") from exc

from autoopt.optimizers import set_optimizer_mode
from autoopt.trial import Trial


def configure_optimizers(trial: Trial, module: Any, total_steps: int | None = None) -> dict[str, Any]:
    """What ``LightningModule.configure_optimizers`` returns: the trial's optimizer over ``module`` and
    its schedule (warmup included) stepped every optimizer step.

    ``total_steps`` defaults to the trainer's ``estimated_stepping_batches`` (epochs x batches,
    accounting for gradient accumulation).
    """
    if total_steps is None:
        trainer = getattr(module, "_trainer", None) or getattr(module, "trainer", None)
        if trainer is None:
            raise ValueError("configure_optimizers: pass total_steps, or call it from a module attached to a Trainer")
        total_steps = int(trainer.estimated_stepping_batches)
    optimizer = trial.optimizer(module)
    scheduler = trial.scheduler(optimizer, total_steps=max(1, int(total_steps)))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}


class TrialCallback(pl.Callback):
    """Reports ``monitor`` to the trial after every validation and stops the fit with
    :class:`autoopt.TrialPruned` when the pruner says so; clips gradients to the trial's ``grad_clip``.
    A schedule-free optimizer is validated at its averaged weights (Lightning does not switch it;
    the Hugging Face Trainer does).

    The report's step is the epoch (1, 2, ...), or the global step with ``step="global_step"``
    (for validation every N steps).
    """

    def __init__(self, trial: Trial, monitor: str, step: str = "epoch") -> None:
        super().__init__()
        if step not in ("epoch", "global_step"):
            raise ValueError(f"step must be 'epoch' or 'global_step', got {step!r}")
        self.trial = trial
        self.monitor = monitor
        self.step = step
        self._losses: list[float] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Keep the training loss since the last report (the curve's train_loss)."""
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and hasattr(loss, "detach"):
            self._losses.append(float(loss.detach()))

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        for optimizer in trainer.optimizers:
            set_optimizer_mode(optimizer, training=False)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        for optimizer in trainer.optimizers:
            set_optimizer_mode(optimizer, training=True)
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            known = ", ".join(sorted(trainer.callback_metrics)) or "none"
            raise KeyError(f"TrialCallback: metric {self.monitor!r} was not logged (self.log); logged: {known}")
        loss = sum(self._losses) / len(self._losses) if self._losses else None
        self._losses.clear()
        step = trainer.current_epoch + 1 if self.step == "epoch" else trainer.global_step
        self.trial.report(float(value), step=step, train_loss=loss)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.trial.clip_gradients(pl_module)


__all__ = ["TrialCallback", "configure_optimizers"]
