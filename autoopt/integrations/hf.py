"""A trial inside Hugging Face ``transformers.Trainer``: its optimizer and schedule as ``optimizers=``, and a callback that reports evaluations and prunes.

    opt, sched = autoopt_hf.optimizers(trial, model, total_steps=epochs * len(train_dataloader))
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                      optimizers=(opt, sched), callbacks=[autoopt_hf.TrialCallback(trial, "eval_accuracy")])
    trainer.train()                               # raises autoopt.TrialPruned when pruned
    return trainer.evaluate()["eval_accuracy"]

Set ``TrainingArguments(max_grad_norm=trial.grad_clip or 0.0)`` to clip as the study sampled
(:func:`training_arguments` fills it and the batch size). Needs ``transformers``
(``pip install 'autoopt[hf]'``).
"""

from __future__ import annotations

from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError("autoopt.integrations.hf needs transformers: pip install 'autoopt[hf]'") from exc

from autoopt.trial import Trial


def optimizers(trial: Trial, model: Any, total_steps: int) -> tuple[Any, Any]:
    """``(optimizer, lr_scheduler)`` for ``Trainer(optimizers=...)``: the trial's optimizer over
    ``model`` and its schedule with warmup, stepped by the Trainer after every optimizer step."""
    optimizer = trial.optimizer(model)
    return optimizer, trial.scheduler(optimizer, total_steps=max(1, int(total_steps)))


def training_arguments(trial: Trial, **kwargs: Any) -> Any:
    """``TrainingArguments`` with the trial's batch size (when searched) and gradient clipping."""
    from transformers import TrainingArguments

    if trial.batch_size:
        kwargs.setdefault("per_device_train_batch_size", trial.batch_size)
    kwargs.setdefault("max_grad_norm", trial.grad_clip or 0.0)
    return TrainingArguments(**kwargs)


class TrialCallback(TrainerCallback):
    """Reports ``metric`` (a key of the Trainer's evaluation metrics, e.g. ``eval_accuracy``) to the
    trial after every evaluation; raises :class:`autoopt.TrialPruned` when the pruner says stop.

    The report's step is the evaluation's epoch (``eval_strategy="epoch"``), else the global step;
    a final ``trainer.evaluate()`` repeats the last step and is not reported again.
    """

    def __init__(self, trial: Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self._train_loss: float | None = None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self._train_loss = float(logs["loss"])

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        metrics = metrics or {}
        if self.metric not in metrics:
            raise KeyError(f"TrialCallback: {self.metric!r} is not among the evaluation metrics "
                           f"({', '.join(sorted(metrics)) or 'none'}); compute_metrics names them eval_<name>")
        epoch = state.epoch
        strategy = getattr(args, "eval_strategy", None)
        by_epoch = getattr(strategy, "value", strategy) == "epoch" and epoch is not None
        step = int(round(epoch)) if by_epoch else int(state.global_step)
        self.trial.report(float(metrics[self.metric]), step=step, train_loss=self._train_loss)


__all__ = ["TrialCallback", "optimizers", "training_arguments"]
