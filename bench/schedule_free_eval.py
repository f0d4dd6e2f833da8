"""What evaluating a schedule-free optimizer at its training weights costs a user's own loop.

`examples/torch_loop.py`'s objective (its 4 epochs, and 16), with Schedule-Free AdamW fixed at a few lrs and seeds, run
twice per (lr, seed): its validation inside ``trial.evaluating()`` (the averaged weights, as
autoopt's own loop evaluates) and with ``evaluating`` made a no-op (what that loop measured
before ``Trial.evaluating`` existed: the interpolated training weights). Same seed, same
training; only what is evaluated differs.

    PYTHONPATH=. python -m bench.schedule_free_eval --out bench/results/schedule-free-eval
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

import torch

import autoopt

LRS = (0.003, 0.01, 0.03)
SEEDS = (0, 1, 2, 3, 4)
EPOCHS = (4, 16)  # the example's own 4 epochs, and a longer run


def accuracy(lr: float, seed: int, averaged: bool, epochs: int) -> float:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    import torch_loop

    torch_loop.EPOCHS = epochs

    config = {"optimizer": "schedulefree_adamw", "scheduler": "constant", "scheduler_params": {},
              "warmup_fraction": 0.05, "grad_clip": None, "batch_size": 32,
              "optimizer_params": {"lr": lr, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}}
    trial = autoopt.Trial.fixed(config)
    if not averaged:
        trial.evaluating = contextlib.nullcontext  # type: ignore[method-assign]
    torch.manual_seed(seed)
    return float(torch_loop.objective(trial))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = [{"epochs": e, "lr": lr, "seed": seed, "averaged": accuracy(lr, seed, True, e),
             "training": accuracy(lr, seed, False, e)} for e in EPOCHS for lr in LRS for seed in SEEDS]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    lines = ["| epochs | lr | val accuracy, averaged weights (median) | training weights (median) | seeds where averaged is better / worse |",
             "|---:|---:|---:|---:|---|"]
    for e, lr in ((e, lr) for e in EPOCHS for lr in LRS):
        mine = [r for r in rows if r["lr"] == lr and r["epochs"] == e]
        better = sum(r["averaged"] > r["training"] for r in mine)
        worse = sum(r["averaged"] < r["training"] for r in mine)
        lines.append(f"| {e} | {lr:g} | {statistics.median(r['averaged'] for r in mine):.4f} | "
                     f"{statistics.median(r['training'] for r in mine):.4f} | {better} / {worse} of {len(mine)} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
