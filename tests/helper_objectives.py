"""Objectives (users' own training loops) for the tests, importable by Ray workers by name.

The data is linearly separable, so AdamW at lr 1e-2 learns it in one epoch while SGD at lr 1e-6
stays near chance: a ThresholdPruner(lower=0.75) prunes the SGD trials at their first report.
"""

from __future__ import annotations

import torch
from torch import nn

import autoopt

EPOCHS = 3
BATCH = 32
#: The space the tests search: AdamW (learns) and SGD at a tiny lr (does not).
SPACE = {"optimizers": ["adamw", "sgd"], "schedulers": ["cosine", "constant"],
         "params": {"adamw": {"lr": 1e-2}, "sgd": {"lr": 1e-6}}}
PRUNE_BELOW = {"lower": 0.75}


def data(n: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] + x[:, 1] - x[:, 2] > 0).long()
    return x, y


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def objective(trial: autoopt.Trial) -> float:
    """A plain PyTorch loop: optimizer, schedule with warmup, clipping, reports, own metrics, traits."""
    x, y = data()
    xv, yv = data(256, seed=1)
    model = mlp()
    batch = trial.batch_size or BATCH
    trial.traits(model, (x[:batch], y[:batch]), nn.functional.cross_entropy, domain="tabular", dataset_size=len(x))
    opt = trial.optimizer(model)
    steps_per_epoch = len(x) // batch
    sched = trial.scheduler(opt, total_steps=EPOCHS * steps_per_epoch)
    acc = 0.0
    for epoch in range(1, EPOCHS + 1):
        total = 0.0
        for i in range(steps_per_epoch):
            xb, yb = x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            trial.clip_gradients(model)
            opt.step()
            sched.step()
            total += float(loss)
        with torch.no_grad():
            acc = float((model(xv).argmax(-1) == yv).float().mean())
        trial.log_metrics({"val_loss": float(nn.functional.cross_entropy(model(xv), yv))}, step=epoch)
        trial.report(acc, step=epoch, train_loss=total / steps_per_epoch)
    return acc


def failing_objective(trial: autoopt.Trial) -> float:
    raise RuntimeError("the user's loop broke")
