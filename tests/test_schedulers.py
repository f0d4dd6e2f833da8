"""LR schedules: every scheduler with and without warmup, on plain, multi-group and wrapped optimizers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autoopt.core.catalog import SCHEDULERS, get_scheduler, scheduler_table
from autoopt.optimizers import build_optimizer
from autoopt.schedulers import WARMUP_START_FACTOR, build_schedule

PEAK = 0.1



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread avoids contention on the shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

class SparseModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(30, 4, mode="mean", sparse=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(tokens))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))


def run(optimizer, schedule, model, inputs, total_steps, steps_per_epoch, metrics=None):
    """Real training steps; returns the lr of every param group used at each step, plus the final lrs."""
    used = []
    gen = torch.Generator().manual_seed(0)
    for step in range(total_steps):
        used.append([float(g["lr"]) for g in optimizer.param_groups])
        optimizer.zero_grad()
        model(inputs(gen)).pow(2).mean().backward()
        optimizer.step()
        schedule.step_batch()
        if (step + 1) % steps_per_epoch == 0:
            epoch = (step + 1) // steps_per_epoch
            schedule.step_epoch(metrics[epoch - 1] if metrics else 0.5)
    return used, [float(g["lr"]) for g in optimizer.param_groups]


def sgd_run(name, params=None, warmup=0.0, total=60, per_epoch=10, metrics=None, direction="maximize"):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=PEAK)
    schedule = build_schedule(
        opt, name, params or {}, warmup_fraction=warmup, total_steps=total, steps_per_epoch=per_epoch,
        direction=direction,
    )
    used, final = run(opt, schedule, model, lambda g: torch.randn(8, 4, generator=g), total, per_epoch, metrics)
    return [u[0] for u in used], final[0], schedule


@pytest.mark.filterwarnings("error")  # no scheduler-order or deprecation warnings in the intended use
@pytest.mark.parametrize("warmup", [0.0, 0.1])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_gives_finite_positive_lrs(name, warmup):
    used, final, schedule = sgd_run(name, warmup=warmup)
    assert all(math.isfinite(lr) and 0 < lr <= PEAK * (1 + 1e-9) for lr in used), used
    assert math.isfinite(final) and final >= 0
    assert schedule.steps_taken == 60 and schedule.warmup_steps == (6 if warmup else 0)


@pytest.mark.parametrize("name", [n for n in SCHEDULERS if n != "one_cycle"])
def test_warmup_ramps_linearly_then_reaches_peak(name):
    used, _, schedule = sgd_run(name, warmup=0.2, total=50)
    w = schedule.warmup_steps
    assert w == 10
    assert used[0] == pytest.approx(WARMUP_START_FACTOR * PEAK)
    ramp = used[: w + 1]
    assert all(b > a for a, b in zip(ramp, ramp[1:])), ramp
    steps = [b - a for a, b in zip(ramp, ramp[1:])]
    assert max(steps) == pytest.approx(min(steps), rel=1e-6)  # linear
    assert used[w] == pytest.approx(PEAK)
    assert max(used) == pytest.approx(PEAK)


@pytest.mark.parametrize("warmup", [0.0, 0.2])
def test_one_cycle_ramp_absorbs_the_warmup(warmup):
    params = {"pct_start": 0.25, "div_factor": 20.0}
    used, final, schedule = sgd_run("one_cycle", params, warmup=warmup, total=100)
    assert used[0] == pytest.approx(PEAK / 20.0)
    top = max(range(100), key=used.__getitem__)
    expected_top = schedule.warmup_steps + 0.25 * (100 - schedule.warmup_steps)
    assert abs(top - expected_top) <= 1.5
    assert used[top] == pytest.approx(PEAK, rel=1e-3)
    assert final < PEAK * 1e-4


@pytest.mark.parametrize("warmup", [0.0, 0.1])
def test_cosine_ends_near_eta_min(warmup):
    used, final, _ = sgd_run("cosine", {"eta_min_ratio": 0.05}, warmup=warmup, total=100)
    assert final == pytest.approx(0.05 * PEAK)
    assert used[-1] == pytest.approx(0.05 * PEAK, abs=1e-3)
    assert all(b <= a + 1e-12 for a, b in zip(used[10:], used[11:]))  # monotone after warmup
    _, final0, _ = sgd_run("cosine", {"eta_min_ratio": 0.0}, warmup=warmup, total=100)
    assert final0 == pytest.approx(0.0, abs=1e-12)


def test_cosine_restarts_restart_and_end_annealed():
    used, final, _ = sgd_run("cosine_restarts", {"n_cycles": 3, "t_mult": 2, "eta_min_ratio": 0.01}, total=210)
    restarts = [i for i in range(1, len(used)) if used[i] > used[i - 1] + 1e-9]
    assert restarts == [31, 93]  # cycles of 31, 62, 124 steps: the run ends inside the third
    assert 0.01 * PEAK < final < 0.02 * PEAK
    assert min(used[93:]) < 0.03 * PEAK


def test_step_shaped_schedules_follow_their_fractions():
    used, final, _ = sgd_run("linear", {"end_factor": 0.01}, total=50)
    assert final == pytest.approx(0.01 * PEAK)
    used, final, _ = sgd_run("polynomial", {"power": 2.0}, total=50)
    assert used[25] == pytest.approx(PEAK * 0.5**2) and final == pytest.approx(0.0, abs=1e-12)
    used, _, _ = sgd_run("step", {"step_fraction": 0.25, "gamma": 0.1}, total=40)
    assert used[9] == pytest.approx(PEAK) and used[10] == pytest.approx(0.1 * PEAK) and used[20] == pytest.approx(0.01 * PEAK)
    used, _, _ = sgd_run("multistep", {"milestones": "0.5,0.75", "gamma": 0.5}, total=40)
    assert used[19] == pytest.approx(PEAK) and used[20] == pytest.approx(0.5 * PEAK) and used[30] == pytest.approx(0.25 * PEAK)
    used, _, _ = sgd_run("exponential", {"gamma": 0.8}, total=40, per_epoch=10)
    assert used[10] == pytest.approx(0.8 * PEAK) and used[20] == pytest.approx(0.64 * PEAK)
    used, _, _ = sgd_run("inverse_sqrt", {"timescale_fraction": 0.1}, total=40)
    assert used[4] == pytest.approx(PEAK / math.sqrt(2.0))
    used, final, _ = sgd_run("constant", total=20)
    assert set(used) == {PEAK} and final == PEAK


def test_schedule_holds_its_final_lr_past_total_steps():
    for name in ("one_cycle", "cosine", "cosine_restarts"):
        torch.manual_seed(0)
        model = nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=PEAK)
        schedule = build_schedule(opt, name, {}, warmup_fraction=0.1, total_steps=20, steps_per_epoch=5)
        run(opt, schedule, model, lambda g: torch.randn(3, 2, generator=g), 20, 5)
        end = schedule.lr
        run(opt, schedule, model, lambda g: torch.randn(3, 2, generator=g), 7, 5)
        assert schedule.lr == end


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_plateau_halves_when_the_metric_stalls(direction):
    sign = 1.0 if direction == "maximize" else -1.0
    improving = [sign * v for v in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)]
    used, final, _ = sgd_run("plateau", {"patience": 1}, total=60, metrics=improving, direction=direction)
    assert final == pytest.approx(PEAK)  # steady improvement in the study's direction: no drop
    worsening = list(reversed(improving))
    used, final, _ = sgd_run("plateau", {"patience": 1}, total=60, metrics=worsening, direction=direction)
    assert final < PEAK  # the same values in the wrong direction are a stall
    stalled = [sign * v for v in (0.1, 0.5, 0.5, 0.5, 0.4, 0.4)]
    used, final, _ = sgd_run("plateau", {"patience": 1}, total=60, metrics=stalled, direction=direction)
    # best at epoch 2; bad epochs 3, 4 -> halve after epoch 4; bad 5, 6 -> halve again
    assert used[40] == pytest.approx(0.5 * PEAK) and used[39] == pytest.approx(PEAK)
    assert final == pytest.approx(0.25 * PEAK)
    assert get_scheduler("plateau").defaults()["factor"] == 0.5


def test_plateau_ignores_epochs_inside_the_warmup():
    # 40% warmup over 50 steps = 20 steps = 2 epochs of 10: their metrics are not fed, so the
    # later (lower) ones do not count as a stall.
    metrics = [0.9, 0.95, 0.1, 0.2, 0.3]
    used, final, schedule = sgd_run("plateau", {"patience": 0}, warmup=0.4, total=50, metrics=metrics)
    assert schedule.warmup_steps == 20
    assert used[20] == pytest.approx(PEAK) and final == pytest.approx(PEAK)


def _sparse_setup():
    model = SparseModel()
    return model, build_optimizer("sparse_adam", model, {"lr": 0.01, "weight_decay": 0.01}), (
        lambda g: torch.randint(0, 30, (8, 3), generator=g)
    )


def _lookahead_setup():
    model = mlp()
    return model, build_optimizer("lookahead", model, {"lr": 0.01, "base": "radam"}), (
        lambda g: torch.randn(8, 4, generator=g)
    )


def _muon_setup():
    model = mlp()
    return model, build_optimizer("muon", model, {"lr": 0.02, "adamw_lr": 1e-3}), (
        lambda g: torch.randn(8, 4, generator=g)
    )


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("setup", [_sparse_setup, _lookahead_setup, _muon_setup], ids=["sparse_adam", "lookahead", "muon"])
@pytest.mark.parametrize("name", ["cosine", "linear", "one_cycle", "plateau", "cosine_restarts"])
def test_schedules_drive_combined_wrapped_and_multi_lr_optimizers(setup, name):
    torch.manual_seed(0)
    model, opt, inputs = setup()
    peaks = [float(g["lr"]) for g in opt.param_groups]
    params = {"eta_min_ratio": 0.1} if name.startswith("cosine") else {}
    schedule = build_schedule(opt, name, params, warmup_fraction=0.1, total_steps=40, steps_per_epoch=10)
    used, final = run(opt, schedule, model, inputs, 40, 10, metrics=[0.5, 0.5, 0.5, 0.5])
    assert used[0] != peaks  # warmup (or one-cycle ramp) lowered every group
    for group_index, peak in enumerate(peaks):
        series = [u[group_index] for u in used]
        assert all(math.isfinite(v) and 0 < v <= peak * (1 + 1e-9) for v in series)
        assert max(series) == pytest.approx(peak, rel=1e-2)
        # every group follows the same relative schedule
        assert [v / peak for v in series] == pytest.approx([v / peaks[0] for v in (u[0] for u in used)], rel=1e-6)
    if name == "cosine":
        assert final == pytest.approx([0.1 * p for p in peaks], rel=1e-6)
    if name == "plateau":
        assert final == pytest.approx([0.5 * p for p in peaks])
    inner = getattr(opt, "optimizer", None)  # Lookahead: the base optimizer sees the scheduled lr
    if inner is not None:
        assert inner.param_groups[0]["lr"] == final[0]


def test_bad_arguments_raise_value_errors_naming_the_field():
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    with pytest.raises(ValueError) as info:
        get_scheduler("cosin")
    assert "cosin" in str(info.value) and "cosine" in str(info.value) and "plateau" in str(info.value)
    with pytest.raises(ValueError, match=r"gamma.*allowed: eta_min_ratio"):
        build_schedule(opt, "cosine", {"gamma": 0.5}, warmup_fraction=0.0, total_steps=10, steps_per_epoch=5)
    with pytest.raises(ValueError, match="milestones"):
        build_schedule(opt, "multistep", {"milestones": "0.1"}, warmup_fraction=0.0, total_steps=10, steps_per_epoch=5)
    with pytest.raises(ValueError, match="warmup_fraction"):
        build_schedule(opt, "cosine", {}, warmup_fraction=1.0, total_steps=10, steps_per_epoch=5)
    with pytest.raises(ValueError, match="total_steps"):
        build_schedule(opt, "cosine", {}, warmup_fraction=0.0, total_steps=0, steps_per_epoch=5)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_schedule(opt, "cosine", {}, warmup_fraction=0.0, total_steps=10, steps_per_epoch=0)
    with pytest.raises(ValueError, match="direction"):
        build_schedule(opt, "plateau", {}, warmup_fraction=0.0, total_steps=10, steps_per_epoch=5, direction="up")


def test_tiny_runs_still_work():
    for name in SCHEDULERS:
        used, final, schedule = sgd_run(name, warmup=0.5, total=2, per_epoch=1)
        assert schedule.warmup_steps == 1
        assert all(math.isfinite(v) and v > 0 for v in used) and math.isfinite(final)


def test_scheduler_specs_are_consistent_and_serialisable():
    import json

    assert {"constant", "cosine", "cosine_restarts", "linear", "step", "multistep", "exponential", "inverse_sqrt",
            "polynomial", "one_cycle", "plateau"} <= set(SCHEDULERS)
    for spec in SCHEDULERS.values():
        assert spec.per in ("step", "epoch_metric")
        for hp in spec.hyperparams:
            assert hp.contains(hp.default), f"{spec.name}.{hp.name}"
    assert get_scheduler("plateau").per == "epoch_metric"
    rows = json.loads(json.dumps(scheduler_table()))
    assert [r["name"] for r in rows] == list(SCHEDULERS)
