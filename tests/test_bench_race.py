"""The race report's per-seed ratios (bench/race.py): how a seed that only one system brought to
the target is counted decides a headline number, so the rule is tested on hand-made runs."""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import median_interval
from bench.race import race_report
from bench.systems import SystemRun, TrialEvent


def _write(out: Path, system: str, seed: int, reach_at: float | None, wall: float) -> None:
    """A cv-big run whose only good trial (value 1.0) ends at ``reach_at`` (None: never good)."""
    events = [TrialEvent(0, 0.5, 0.5, "complete", 6)]
    if reach_at is not None:
        events.append(TrialEvent(1, reach_at, 1.0, "complete", 6))
    run = SystemRun(system, "cv", seed, 2, 10, "maximize", wall, events)
    d = run.to_dict()
    d.update(part="race", task_name="cv-big", started_utc="-", load_before={"loadavg": [1.0, 1.0, 1.0]},
             load_after={"loadavg": [1.0, 1.0, 1.0]})
    (out / "race").mkdir(parents=True, exist_ok=True)
    (out / "race" / f"{system}__cv-big__{seed}.json").write_text(json.dumps(d))


def test_a_seed_only_the_other_system_reached_counts_as_a_loss(tmp_path):
    #            seed: autoopt reach, Tune reach (wall 5 s each)
    for seed, (mine, tune) in enumerate([(2.0, 4.0),     # both: Tune / autoopt = 2
                                         (None, 3.0),    # only Tune: a loss, ratio 0
                                         (1.0, None),    # only autoopt: Tune's wall 5 s / 1 s = 5
                                         (None, None)]): # neither: no ratio
        _write(tmp_path, "autoopt_sh", seed, mine, 5.0)
        _write(tmp_path, "tune_asha", seed, tune, 5.0)
    text, summary = race_report(tmp_path, 0.01)
    ratio = summary["cv-big/autoopt_sh"]["ratios"]["tune_asha / autoopt_sh"]
    assert ratio["time_to_target"] == {"median": 2.0, "min": 0.0, "max": 5.0, "n": 3}
    assert ratio["only_other_reached"] == 1 and ratio["autoopt_faster_seeds"] == 2
    assert "2 of 3 (1 reached by the other only, counted as 0)" in text


def test_the_median_interval_is_seeded_and_inside_the_values():
    values = [0.5, 0.9, 1.0, 1.1, 1.2, 1.3, 2.0, 3.0, 1.05, 0.95, 1.15, 1.25, 0.8, 1.4, 1.6]
    a, b = median_interval(values), median_interval(list(reversed(values)))
    assert a == b  # seeded: the same values give the same interval
    assert min(values) <= a["lo"] <= 1.15 <= a["hi"] <= max(values)  # 1.15 is the median
    assert a["q1"] < 1.15 < a["q3"] and a["n"] == 15
    assert median_interval([1.0])["lo"] is None  # one seed has no interval


def test_the_warm_started_arm_is_paired_with_tune_and_the_cold_arm(tmp_path):
    from bench.race import RACE_SYSTEMS, WARM_SYSTEMS

    assert WARM_SYSTEMS <= set(RACE_SYSTEMS) and RACE_SYSTEMS["autoopt_asha_warm"] == RACE_SYSTEMS["autoopt_asha"]
    for seed, (warm, cold, tune) in enumerate([(1.0, 2.0, 3.0), (2.0, 2.0, 8.0), (None, 1.0, 1.0)]):
        _write(tmp_path, "autoopt_asha_warm", seed, warm, 5.0)
        _write(tmp_path, "autoopt_asha", seed, cold, 5.0)
        _write(tmp_path, "tune_asha", seed, tune, 5.0)
    _, summary = race_report(tmp_path, 0.01)
    ratios = summary["cv-big/autoopt_sh"]["ratios"]
    assert ratios["tune_asha / autoopt_asha_warm"]["time_to_target"] == {"median": 3.0, "min": 0.0, "max": 4.0, "n": 3}
    assert ratios["autoopt_asha / autoopt_asha_warm"]["time_to_target"]["median"] == 1.0


def test_the_own_driver_arms_are_paired_with_each_other_and_run_their_base_system(tmp_path):
    from bench.race import FRESH_SYSTEMS, RACE_SYSTEMS, WARM_SYSTEMS, main

    # each own-driver arm runs the same system as its one-driver twin, warm-started only as that one is
    assert set(FRESH_SYSTEMS.values()) <= set(RACE_SYSTEMS)
    assert {k for k, v in FRESH_SYSTEMS.items() if v in WARM_SYSTEMS} == {"autoopt_asha_warm_fresh"}
    for seed, (mine, tune, kept) in enumerate([(2.0, 3.0, 1.0), (4.0, 4.0, 2.0), (1.0, None, 1.0)]):
        _write(tmp_path, "autoopt_asha_fresh", seed, mine, 5.0)
        _write(tmp_path, "tune_asha_fresh", seed, tune, 5.0)
        _write(tmp_path, "autoopt_asha", seed, kept, 5.0)
    _, summary = race_report(tmp_path, 0.01)
    ratios = summary["cv-big/autoopt_sh"]["ratios"]
    assert ratios["tune_asha_fresh / autoopt_asha_fresh"]["time_to_target"] == {"median": 1.5, "min": 1.0, "max": 5.0, "n": 3}
    assert ratios["autoopt_asha / autoopt_asha_fresh"]["time_to_target"]["median"] == 0.5
    # the internal per-study command takes only those arms
    import pytest

    with pytest.raises(SystemExit) as exc:
        main(["study", "--out", str(tmp_path), "--system", "autoopt_asha", "--task", "cv-big", "--seed", "0",
              "--address", "127.0.0.1:1"])
    assert exc.value.code == 2


def test_plain_optuna_in_a_process_of_its_own_runs_without_ray_and_is_paired(tmp_path):
    """The ``optuna_asha_fresh`` arm: the per-study command runs plain Optuna with no Ray (the
    address given is nobody's), its clock started before the data is loaded, and the report pairs
    it with autoopt's own-driver arm."""
    import subprocess
    import sys

    # in a process of its own, as bench.race runs it (it sets torch's threads and the module's trial count)
    done = subprocess.run([sys.executable, "-m", "bench.race", "study", "--out", str(tmp_path), "--system",
                           "optuna_asha_fresh", "--task", "tabular", "--seed", "0", "--address", "127.0.0.1:1",
                           "--trials", "2"], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((tmp_path / "race" / "optuna_asha_fresh__tabular__0.json").read_text())
    assert run["system"] == "optuna_asha_fresh" and len(run["events"]) == 2
    assert run["extra"]["pruner"] == "asha"
    # the cold clock: the first trial ends after the task's data were loaded under it
    assert min(e["t_end"] for e in run["events"]) < run["wall_s"]
    for seed, (mine, other) in enumerate([(2.0, 3.0), (4.0, 2.0)]):
        _write(tmp_path, "autoopt_asha_fresh", seed, mine, 5.0)
        _write(tmp_path, "optuna_asha_fresh", seed, other, 5.0)
    _, summary = race_report(tmp_path, 0.01)
    ratio = summary["cv-big/autoopt_sh"]["ratios"]["optuna_asha_fresh / autoopt_asha_fresh"]
    assert ratio["time_to_target"]["median"] == 1.0 and ratio["autoopt_faster_seeds"] == 1


def test_the_competitors_sample_the_space_autoopts_coordinator_builds():
    """Plain Optuna and Tune sample ``bench.systems.build_space``; it must be the space autoopt's
    runner gives its coordinator. It once decided Muon's place with another rule (any 2-D weight)
    than the runner's (hidden 2-D weights, the output head left out), so on the engine bench's
    one-layer model plain Optuna also drew Muon, which failed at once, while autoopt never did."""
    from autoopt.optimizers import hidden_matrix_params
    from autoopt.space import SearchSpace
    from autoopt.spec import SpaceSpec
    from autoopt.task import load_task
    from bench.systems import build_space

    for task in ("bench.trivial:TrivialTask", "tabular"):
        loaded = load_task(task)
        runners = SearchSpace(SpaceSpec(), loaded.traits(),
                              has_matrix_params=bool(hidden_matrix_params(loaded.build_model())))
        assert build_space(task, {}, {}).optimizers == runners.optimizers
    assert "muon" not in build_space("bench.trivial:TrivialTask", {}, {}).optimizers
    assert "muon" in build_space("tabular", {}, {}).optimizers
