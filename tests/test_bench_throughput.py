"""bench/throughput.py pairs each autoopt arm with the Tune arm doing the same work, seed by seed,
and judges the median ratio against the 3x target."""

from __future__ import annotations

from bench.throughput import PAIRS, report


def _row(arm: str, seed: int, wall: float, window: float) -> dict:
    return {"arm": arm, "seed": seed, "wall_s": wall, "trials": 100, "errors": 0,
            "trials_per_s": 100 / wall, "trials_per_s_window": 100 / window}


def test_pairs_compare_the_same_work():
    assert ("autoopt", "tune_mlflow") in PAIRS and ("autoopt_notrack", "tune") in PAIRS


def test_ratios_are_per_seed_and_the_verdict_takes_their_median():
    rows = []
    for seed, (a, t) in enumerate([(10, 40), (10, 20), (10, 35)]):  # per-seed ratios 4, 2, 3.5: median 3.5
        rows += [_row("autoopt", seed, a, a - 1), _row("tune_mlflow", seed, t, t - 5)]
    for seed, (a, t) in enumerate([(5, 10), (5, 30), (5, 12)]):  # 2, 6, 2.4: median 2.4
        rows += [_row("autoopt_notrack", seed, a, a), _row("tune", seed, t, t)]
    rows.append(_row("tune", 7, 1, 1))  # a seed without its autoopt counterpart is not paired
    text = report(rows)
    pair_lines = {line.split(" |")[0].strip("| "): line for line in text.splitlines() if " / " in line}
    mlflow, plain = pair_lines["autoopt / tune_mlflow"], pair_lines["autoopt_notrack / tune"]
    assert "| 3 |" in mlflow and "3.5" in mlflow and mlflow.rstrip(" |").endswith("yes")
    assert "| 3 |" in plain and "2.4" in plain and plain.rstrip(" |").endswith("no")


def test_an_arm_that_did_not_run_is_left_out():
    text = report([_row("autoopt", 0, 10, 9), _row("tune", 0, 20, 19)])
    assert "tune_mlflow" not in text and "autoopt_notrack" not in text
