"""The best configuration a study found, as code to paste into a plain PyTorch loop, a Lightning module or a Hugging Face Trainer.

Each snippet rebuilds exactly what the best trial trained with through
:meth:`autoopt.Trial.fixed` (the same builders a study uses), so the optimizer's parameter groups,
the warmup and the schedule match; the plain ``torch.optim`` line, where there is one, is a comment.
"""

from __future__ import annotations

import pprint
from typing import Any

FORMATS = ("torch", "lightning", "hf")


def _header(config: dict[str, Any], study_name: str, metric: str, value: float | None, trial_number: int | None,
            fmt: str) -> list[str]:
    from autoopt.report import plain_torch_line

    title = f"Best configuration of autoopt study {study_name!r}"
    if trial_number is not None:
        title += f" (trial {trial_number}" + (f", {metric}={value:.6g})" if isinstance(value, (int, float)) else ")")
    where = {"torch": "your own PyTorch training loop", "lightning": "a PyTorch Lightning module",
             "hf": "a Hugging Face transformers.Trainer"}[fmt]
    lines = [f'"""{title}, for {where}.', ""]
    plain = plain_torch_line(config)
    if plain:
        lines += ["Without autoopt the optimizer alone is (the warmup and schedule are in CONFIG):", f"    {plain}", ""]
    lines += ['"""', "import autoopt", ""]
    lines += [f"CONFIG = {pprint.pformat(config, sort_dicts=True, width=96)}", ""]
    return lines


def best_config_code(config: dict[str, Any], fmt: str = "torch", *, study_name: str = "", metric: str = "value",
                     value: float | None = None, trial_number: int | None = None) -> str:
    """Python source that trains with ``config`` in ``fmt`` (torch, lightning or hf)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    lines = _header(config, study_name, metric, value, trial_number, fmt)
    schedule_free = _schedule_free(config)
    if fmt == "torch":
        lines += [
            "",
            "def optimizer_and_scheduler(model, total_steps):",
            '    """The optimizer and its LR schedule (warmup included): call scheduler.step() after every',
            "    optimizer.step(), and clip_gradients(model) between loss.backward() and optimizer.step().",
            *(["    Schedule-free: call optimizer.eval() before evaluating or saving the model (its averaged",
               "    weights) and optimizer.train() before training again."] if schedule_free else []),
            '    """',
            "    best = autoopt.Trial.fixed(CONFIG)",
            "    optimizer = best.optimizer(model)",
            "    return optimizer, best.scheduler(optimizer, total_steps=total_steps)",
            "",
            "",
            "def clip_gradients(model):",
            "    autoopt.Trial.fixed(CONFIG).clip_gradients(model)",
            "",
            "",
            f"BATCH_SIZE = {config.get('batch_size')!r}",
        ]
    elif fmt == "lightning":
        lines += [
            "from autoopt.integrations import lightning as autoopt_lightning",
            *(["from autoopt.optimizers import set_optimizer_mode"] if schedule_free else []),
            "",
            "",
            "class BestOptimizer:",
            '    """Mix into your LightningModule (class Net(BestOptimizer, L.LightningModule)): its',
            "    configure_optimizers returns the best optimizer and its per-step schedule. Train with",
            '    L.Trainer(gradient_clip_val=GRADIENT_CLIP_VAL)."""',
            "",
            "    def configure_optimizers(self):",
            "        return autoopt_lightning.configure_optimizers(autoopt.Trial.fixed(CONFIG), self)",
            *(["",
               "    # schedule-free: validate at the averaged weights (Lightning does not switch them)",
               "    def on_validation_start(self):",
               "        for optimizer in self.trainer.optimizers:",
               "            set_optimizer_mode(optimizer, training=False)",
               "",
               "    def on_validation_end(self):",
               "        for optimizer in self.trainer.optimizers:",
               "            set_optimizer_mode(optimizer, training=True)"] if schedule_free else []),
            "",
            "",
            f"GRADIENT_CLIP_VAL = {config.get('grad_clip')!r}",
            f"BATCH_SIZE = {config.get('batch_size')!r}",
        ]
    else:
        lines += [
            "from autoopt.integrations import hf as autoopt_hf",
            "",
            "",
            "def optimizers(model, total_steps):",
            '    """Trainer(optimizers=optimizers(model, total_steps), args=training_arguments(...))."""',
            "    return autoopt_hf.optimizers(autoopt.Trial.fixed(CONFIG), model, total_steps)",
            "",
            "",
            "def training_arguments(**kwargs):",
            '    """TrainingArguments with the best batch size and gradient clipping."""',
            "    return autoopt_hf.training_arguments(autoopt.Trial.fixed(CONFIG), **kwargs)",
        ]
    return "\n".join(lines) + "\n"


def _schedule_free(config: dict[str, Any]) -> bool:
    """Does the configuration's optimizer evaluate at averaged weights (``optimizer.eval()``)?"""
    from autoopt.core.catalog import CATALOG

    spec = CATALOG.get(str(config.get("optimizer")))
    return spec is not None and spec.needs_train_eval_mode


__all__ = ["FORMATS", "best_config_code"]
