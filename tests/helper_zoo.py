"""A small generated meta-dataset in the zoo's file format, with a known answer.

Every task's value is a parabola in log10 lr around each optimizer's best lr (plus seeded
noise), diverging far above it. SGD's best lr grows linearly with the batch size (0.1 per 64
examples) while AdamW's and Lion's do not, so a model that learns from it must find that. Used
by the recommender's tests to check the learner and the evaluation, not to stand in for the
real zoo (the shipped-model tests use that).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from autoopt.recommend import sweep

OPTIMIZERS = ("sgd", "momentum", "adamw", "lion")
#: value lost by each optimizer at its best lr
OFFSET = {"adamw": 0.0, "lion": 0.02, "momentum": 0.03, "sgd": 0.1}
GRID_CENTRE = {"sgd": -1.0, "momentum": -2.0, "adamw": -2.5, "lion": -3.5}
FAMILIES = (("tab_a", "tabular"), ("cv_a", "cv"), ("nlp_a", "nlp"), ("tab_b", "tabular"), ("other_a", "other"))
BATCHES = (16, 64, 256)


def best_log_lr(optimizer: str, batch: int) -> float:
    if optimizer == "sgd":
        return math.log10(0.1 * batch / 64)
    if optimizer == "momentum":
        return math.log10(0.01 * batch / 64)
    return {"adamw": -2.7, "lion": -3.6}[optimizer]


def runs_and_instances(families: int = len(FAMILIES), seed: int = 0) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    runs, instances = [], []
    for fam, domain in FAMILIES[:families]:
        for k, batch in enumerate(BATCHES):
            inst = f"{fam}-{k:02d}"
            n_params = int(2000 * 3**k)
            instances.append({
                "instance": inst, "family": fam, "domain": domain, "knobs": {"batch_size": batch}, "batch_size": batch,
                "n_params": n_params, "dataset_size": 4000, "grad_sparsity": 0.1, "sparse_gradients": False,
                "metric": "val_accuracy", "direction": "maximize", "steps": 100,
            })
            for opt in OPTIMIZERS:
                best = best_log_lr(opt, batch)
                for i in range(7):
                    x = GRID_CENTRE[opt] + (i - 3) * 0.5 + (0.5 if opt == "sgd" and batch == 256 else 0.0)
                    for s in (0, 1):
                        diverged = x > best + 1.2
                        value = 0.9 - OFFSET[opt] - 0.08 * (x - best) ** 2 + rng.normal(0, 0.003)
                        runs.append({
                            "instance": inst, "optimizer": opt, "lr": float(f"{10 ** x:.6g}"), "seed": s,
                            "status": "diverged" if diverged else "ok", "value": math.nan if diverged else value,
                            "final_train_loss": 0.1, "seconds": 0.01, "reason": "diverged: nan loss" if diverged else "",
                        })
    return runs, instances


def write_zoo(out: Path, families: int = len(FAMILIES)) -> Path:
    """The generated meta-dataset as a zoo folder (MANIFEST.json, instances.csv, runs-01.csv.gz)."""
    out.mkdir(parents=True, exist_ok=True)
    runs, instances = runs_and_instances(families)
    sweep.write_runs(out / sweep.chunk_file(1), runs)
    (out / sweep.INSTANCES).write_text(sweep._csv_text(sweep.INSTANCE_COLUMNS, instances))
    (out / sweep.MANIFEST).write_text(json.dumps({"schema_version": sweep.SCHEMA_VERSION, "command": "tests/helper_zoo.py",
                                                  "optimizers": list(OPTIMIZERS), "created": "test", "updated": "test"}))
    return out


def grids(families: int = len(FAMILIES)) -> dict:
    import pandas as pd

    from autoopt.recommend.regret import task_grids

    runs, instances = runs_and_instances(families)
    return task_grids(pd.DataFrame(runs).merge(pd.DataFrame(instances), on="instance"))
