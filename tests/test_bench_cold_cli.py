"""bench/cold_cli.py's summary: ratios per pair (this / baseline), medians over the pairs."""

from __future__ import annotations

from bench.cold_cli import report


def _row(pair: int, arm: str, first: float, wall: float, cpu: float) -> dict:
    return {"pair": pair, "arm": arm, "first_trial_s": first, "wall_s": wall, "machine_cpu_s": cpu}


def test_ratios_are_per_pair_and_a_failed_run_leaves_its_pair_out():
    rows = [_row(0, "baseline", 10.0, 20.0, 30.0), _row(0, "this", 8.0, 18.0, 27.0),
            _row(1, "this", 9.0, 22.0, 26.0), _row(1, "baseline", 9.0, 20.0, 30.0),
            _row(2, "baseline", 12.0, 30.0, 40.0), _row(2, "this", 6.0, 15.0, 20.0),
            {"pair": 3, "arm": "baseline", "error": "boom", "wall_s": 1.0}, _row(3, "this", 1.0, 1.0, 1.0)]
    out = report(rows)
    assert out["pairs"] == 3
    assert out["first_trial_ratio"] == {"median": 0.8, "min": 0.5, "max": 1.0}
    assert out["wall_ratio"] == {"median": 0.9, "min": 0.5, "max": 1.1}
    assert out["cpu_saved_s"] == {"median": 4.0, "min": 3.0, "max": 20.0}
    # a ratio of medians would differ: baseline first trials 10, 9, 12 (median 10); this 8, 9, 6, 1
    assert out["baseline_first_trial_s"]["median"] == 10.0 and out["this_first_trial_s"]["median"] == 7.0
