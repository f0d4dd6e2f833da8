"""The two lr benchmarks of 2026-12-06 (bench/recommender_grad_scale.py, bench/lion_range.py): their
verdicts rest on the gradient-scale probe, the rule's family-balanced intercept and the reports,
so those are checked on a real zoo task and on hand-made inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from autoopt.recommend.regret import Curve, TaskGrid
from bench import lion_range, recommender_grad_scale as gs


def _grid(name: str, family: str, best_log_lr: float) -> TaskGrid:
    x = np.arange(-4.0, 0.5, 0.5)
    regret = np.abs(x - best_log_lr)
    return TaskGrid(name, family, {"domain": "tabular"}, "val_loss", "minimize", 0.0, 1.0,
                    curves={o: Curve(x, regret, regret) for o in gs.OPTIMIZERS})


def test_the_probe_is_the_rms_gradient_entry_of_a_real_zoo_task():
    a = gs.probe("tab_reg-00", batches=2)
    assert a["grad_rms"] > 0 and a["grad_norm"] > 0 and math.isfinite(a["loss0"])
    assert a == gs.probe("tab_reg-00", batches=2)  # seeded: the same numbers again


def test_the_rules_intercept_weighs_each_family_as_one():
    # family "big": 4 tasks at log10(best lr) + log10(grad_rms) = -3; families a, b: one task each at -5
    grids, probes = {}, {}
    for i, (fam, a) in enumerate([("big", -3.0)] * 4 + [("a", -5.0), ("b", -5.0)]):
        rms = 10 ** (-1 - 0.5 * i)
        grids[f"t{i}"] = _grid(f"t{i}", fam, a - math.log10(rms))
        probes[f"t{i}"] = {"grad_rms": rms}
    out = gs.rule_intercepts(grids, probes, ("momentum",))
    assert out["momentum"] == pytest.approx((-3 - 5 - 5) / 3)


def test_the_summary_counts_families_the_rule_wins_and_loses():
    rows = []
    for fam, rec, rule in (("f1", 1.0, 0.5), ("f2", 1.0, 0.5), ("f3", 0.2, 0.4)):
        for o in gs.OPTIMIZERS:
            rows.append({"family": fam, "optimizer": o, "tuned": 0.1,
                         **{f"regret_{s}": {"recommender": rec, "grad_scale": rule}.get(s, 0.3) for s in gs.STRATEGIES},
                         **{f"err_{s}": 0.5 for s in gs.STRATEGIES}})
    summary = gs.summarise(rows)["momentum"]
    assert summary["grad_scale_better_families"] == 2 and summary["grad_scale_worse_families"] == 1
    assert summary["recommender"]["regret"] == pytest.approx(2.2 / 3) and summary["grad_scale"]["regret"] == pytest.approx(1.4 / 3)
    assert "| momentum |" in gs.markdown(gs.summarise(rows))


def test_the_lion_report_compares_medians_in_each_tasks_direction(tmp_path):
    values = {("tabular", "catalog"): [0.5, 0.4, 0.6], ("tabular", "old_range"): [0.45, 0.45, 0.45],
              ("cv", "catalog"): [0.9, 0.95, 0.97], ("cv", "old_range"): [0.9, 0.91, 0.92]}
    for (task, arm), vs in values.items():
        for seed, v in enumerate(vs):
            (tmp_path / f"{task}__{arm}__{seed}.json").write_text(json.dumps(
                {"task": task, "arm": arm, "seed": seed, "best_value": v, "wall_s": 1.0,
                 "direction": "minimize" if task == "tabular" else "maximize"}))
    summary = lion_range.report(tmp_path)
    # tabular minimises: the catalog arm's median 0.5 is worse than 0.45; cv maximises: 0.95 beats 0.91
    assert summary["tabular"]["catalog_no_worse"] is False and summary["cv"]["catalog_no_worse"] is True
    assert summary["cv"]["median"] == {"catalog": 0.95, "old_range": 0.91}
    assert "| cv | maximize | 3 |" in (tmp_path / "summary.md").read_text()
