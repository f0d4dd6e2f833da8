"""bench/engine_trees.py's summary: the second tree against the first, round by round."""

from __future__ import annotations

from bench.engine_trees import report


def _row(r: int, tree: str, overhead: float, trivial: float) -> dict:
    return {"round": r, "tree": tree, "one_second_overhead": overhead, "trivial_wall_s": trivial,
            "trivial_ratio": trivial / 10.0}


def test_rounds_pair_the_trees_and_a_failed_driver_leaves_its_round_out():
    rows = [_row(0, "/old", 0.06, 10.0), _row(0, "/new", 0.03, 9.0),
            _row(1, "/new", 0.05, 11.0), _row(1, "/old", 0.04, 10.0),
            _row(2, "/old", 0.07, 12.0), _row(2, "/new", 0.02, 6.0),
            {"round": 3, "tree": "/old", "error": "boom"}, _row(3, "/new", 0.01, 1.0)]
    out = report(rows)
    assert out["old"] == "/old" and out["new"] == "/new" and out["rounds"] == 3
    assert out["one_second_overhead_old"] == [0.06, 0.04, 0.07] and out["rounds_new_lower"] == 2
    assert out["one_second_overhead_median_old"] == 0.06 and out["one_second_overhead_median_new"] == 0.03
    assert out["trivial_wall_ratio_new_over_old"] == 0.9  # per round: 0.9, 1.1, 0.5
