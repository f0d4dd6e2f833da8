"""The task zoo and its dense lr sweep: determinism, measured traits, coverage, resumable build, files.

Real parts: the zoo's generated data and models, real backward passes for the traits, real
training runs on the session's local Ray (a handful of cheap tabular runs).
"""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from autoopt.recommend import sweep, zoo_data
from autoopt.recommend.cli import app
from autoopt.core.traits import DOMAINS
from autoopt.tasks.zoo import FAMILIES, instances, load_instance

# one cheap instance per kind of data generator and model
CHEAP = ("cv_vit-05", "nlp_bag-02", "nlp_rnn-02", "tab_cls-01", "recsys_ctr-02", "speech_gru-02", "other_denoise-02")


def _data(task) -> list[torch.Tensor]:
    train, val = task.datasets()
    return [*train.tensors, *val.tensors]


@pytest.mark.parametrize("instance_id", CHEAP)
def test_same_seed_same_data_and_weights_other_seed_other_data(instance_id):
    a, b = load_instance(instance_id), load_instance(instance_id)
    for x, y in zip(_data(a), _data(b), strict=True):
        assert torch.equal(x, y)
    torch.manual_seed(7)
    wa = a.build_model().state_dict()
    torch.manual_seed(7)
    wb = b.build_model().state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    other = load_instance(instance_id, seed=a.seed + 1)
    assert any(x.shape != y.shape or not torch.equal(x, y) for x, y in zip(_data(a), _data(other), strict=True))


def test_knob_overrides_are_checked_and_change_the_instance():
    small = load_instance("tab_cls-00", n_train=500)
    assert len(small.datasets()[0]) == 500
    with pytest.raises(ValueError, match="unknown knob"):
        load_instance("tab_cls-00", widht=3)
    with pytest.raises(ValueError, match="unknown zoo instance"):
        load_instance("tab_cls-99")
    with pytest.raises(ValueError, match="unknown zoo"):
        load_instance("nope-00")


def test_traits_are_measured_from_real_gradients():
    sparse = load_instance("recsys_ctr-04").describe_instance()
    bag = load_instance("nlp_bag-02").describe_instance()
    dense = load_instance("tab_cls-00").describe_instance()
    assert sparse["grad_sparsity"] > 0.5 and bag["grad_sparsity"] > 0.5
    assert sparse["sparse_gradients"] and not dense["sparse_gradients"]
    assert dense["grad_sparsity"] < 0.1
    assert dense["grad_rms"] > 0 and sparse["grad_rms"] > 0  # the gradient scale, from the same passes
    task = load_instance("tab_cls-00")
    assert dense["n_params"] == sum(p.numel() for p in task.build_model().parameters())
    # a wider net of the same family has more parameters: counted, not declared
    assert load_instance("tab_cls-00", width=128).describe_instance()["n_params"] > dense["n_params"]


def test_zoo_covers_every_domain_and_the_size_ranges():
    ids = instances()
    assert len(FAMILIES) >= 10 and len(ids) >= 80
    assert len(set(ids)) == len(ids)
    assert ids[: len(FAMILIES)] == [f"{f}-00" for f in FAMILIES]  # round-robin: chunk 1 = every family
    domains = {cls.domain for cls in FAMILIES.values()}
    assert {"cv", "nlp", "tabular", "recsys", "speech", "other"} <= domains <= set(DOMAINS)
    batch = [cls.variants[i]["batch_size"] for cls in FAMILIES.values() for i in range(len(cls.variants))]
    assert min(batch) <= 8 and max(batch) >= 2048
    # measured sizes, from the shipped instances table, spot-checked against a fresh measurement
    table = {r["instance"]: r for r in sweep.read_instances(sweep.default_out_dir() / sweep.INSTANCES)}
    assert set(ids) <= set(table)
    params = [table[i]["n_params"] for i in ids]
    examples = [table[i]["dataset_size"] for i in ids]
    assert min(params) <= 2_000 and max(params) >= 500_000
    assert min(examples) <= 200 and max(examples) >= 50_000
    for iid in (min(ids, key=lambda i: table[i]["n_params"]), min(ids, key=lambda i: table[i]["dataset_size"])):
        fresh = load_instance(iid).describe_instance()
        assert fresh["n_params"] == table[iid]["n_params"] and fresh["dataset_size"] == table[iid]["dataset_size"]


def test_lr_grids_are_log_spaced_and_family_shifted():
    grid = sweep.lr_grid("adam")
    assert len(grid) == sweep.LR_POINTS
    ratios = np.diff(np.log10(grid))
    assert np.allclose(ratios, sweep.LR_STEP_DECADES, atol=1e-5)
    assert np.allclose(np.log10(sweep.lr_grid("adam", 0.5)), np.log10(grid) + 0.5, atol=1e-5)
    with pytest.raises(ValueError, match="no lr grid"):
        sweep.lr_grid("lbfgs")


def test_runs_file_round_trips_through_the_loader(tmp_path):
    rows = [
        {"instance": "tab_reg-01", "optimizer": "adam", "lr": 0.001, "seed": 0, "status": "ok", "value": 0.4123456,
         "final_train_loss": 0.5, "seconds": 0.12, "reason": ""},
        {"instance": "tab_reg-01", "optimizer": "sgd", "lr": 3.16228, "seed": 1, "status": "diverged", "value": math.nan,
         "final_train_loss": math.nan, "seconds": 0.01, "reason": 'diverged: loss "inf", at step 3'},
    ]
    sweep.write_runs(tmp_path / "runs-02.csv.gz", rows)
    first = (tmp_path / "runs-02.csv.gz").read_bytes()
    sweep.write_runs(tmp_path / "runs-02.csv.gz", rows)
    assert (tmp_path / "runs-02.csv.gz").read_bytes() == first  # reproducible bytes
    assert gzip.decompress(first).decode().startswith(",".join(sweep.RUN_COLUMNS))
    store = sweep.ZooStore(tmp_path)
    store.instances["tab_reg-01"] = load_instance("tab_reg-01").describe_instance()
    store.write_instances({})
    store.write_manifest(sweep.SweepPlan.make(["tab_reg"], 2, ["adam", "sgd"], [0, 1]), "test")
    table, manifest = zoo_data.load(tmp_path)
    assert manifest["schema_version"] == sweep.SCHEMA_VERSION and manifest["command"] == "test"
    assert len(table) == 2 and set(table["family"]) == {"tab_reg"} and set(table["domain"]) == {"tabular"}
    ok, bad = table.iloc[0], table.iloc[1]
    assert ok["value"] == pytest.approx(0.4123456) and ok["n_params"] == store.instances["tab_reg-01"]["n_params"]
    assert bad["status"] == "diverged" and math.isnan(bad["value"]) and bad["reason"] == rows[1]["reason"]
    assert isinstance(ok["knobs"], dict) and ok["knobs"]["source"] == "diabetes"


def test_build_resumes_without_rerunning(ray_local, tmp_path):
    kwargs = dict(families=["tab_reg"], limit=1, optimizers=["sgd", "adam"], seeds=[0], progress=False, log=lambda m: None)
    first = sweep.build(tmp_path, max_units=1, **kwargs)  # stopped after one unit: the chunk stays open
    assert first["ran"] == 7 and first["sealed_chunks"] == []
    assert not (tmp_path / "runs-01.csv.gz").exists()
    journal = tmp_path / sweep.JOURNAL_DIR / "runs-01.csv"
    with journal.open("a") as f:
        f.write("tab_reg-00,adam,0.0001,0,ok")  # a line cut short by an interruption
    before = {sweep.run_key(r): r for r in sweep.read_runs(journal)}
    assert len(before) == 7
    assert len(zoo_data.load(tmp_path)[0]) == 0 and len(zoo_data.load(tmp_path, journals=True)[0]) == 7

    second = sweep.build(tmp_path, **kwargs)
    assert second["ran"] == 7 and second["sealed_chunks"] == [1]  # only the missing unit ran
    rows = sweep.read_runs(tmp_path / "runs-01.csv.gz")
    keys = [sweep.run_key(r) for r in rows]
    assert len(keys) == len(set(keys)) == 14
    assert {k[1] for k in keys} == {"sgd", "adam"}
    assert {k[2] for k in keys if k[1] == "adam"} == set(sweep.family_lr_grid(FAMILIES["tab_reg"], "adam"))
    for k, r in before.items():  # the first build's rows are kept as they were, not re-run
        again = next(x for x in rows if sweep.run_key(x) == k)
        assert again["seconds"] == r["seconds"] and (again["value"] == r["value"] or math.isnan(r["value"]))
    assert all(r["status"] in ("ok", "diverged", "failed") for r in rows)
    assert all(math.isfinite(r["value"]) == (r["status"] == "ok") for r in rows)
    assert not journal.exists()

    third = sweep.build(tmp_path, **kwargs)
    assert third["ran"] == 0 and third["runs_done"] == third["runs_total"] == 14
    table, manifest = zoo_data.load(tmp_path)
    assert len(table) == 14 and manifest["chunks"]["01"]["complete"]
    assert manifest["lr_grid"]["tab_reg"]["adam"] == sweep.lr_grid("adam", FAMILIES["tab_reg"].lr_shift)
    assert manifest["lr_grid"]["tab_reg"]["sgd"] == sweep.family_lr_grid(FAMILIES["tab_reg"], "sgd")
    # the metric tells lrs apart: the grid's best and worst ok runs differ
    ok = table[table.status == "ok"]
    assert ok.groupby("optimizer")["value"].agg(lambda v: v.max() - v.min()).min() > 0.01

    # an instances file from before the gradient-scale trait: the next build measures it, runs nothing
    measured = sweep.read_instances(tmp_path / sweep.INSTANCES)[0]["grad_rms"]
    assert measured == pytest.approx(load_instance("tab_reg-00").traits().grad_rms, rel=1e-3) and measured > 0
    text = (tmp_path / sweep.INSTANCES).read_text().splitlines()
    (tmp_path / sweep.INSTANCES).write_text("\n".join(line.rsplit(",", 1)[0] for line in text) + "\n")
    assert sweep.read_instances(tmp_path / sweep.INSTANCES)[0]["grad_rms"] is None
    again = sweep.build(tmp_path, **kwargs)
    assert again["ran"] == 0 and sweep.read_instances(tmp_path / sweep.INSTANCES)[0]["grad_rms"] == measured

    # a baseline added later (Prodigy at its fixed lr) runs alone and reseals the chunk
    fourth = sweep.build(tmp_path, **{**kwargs, "optimizers": ["sgd", "adam", "prodigy"]})
    assert fourth["ran"] == 1 and fourth["sealed_chunks"] == [1] and fourth["runs_total"] == 15
    table, manifest = zoo_data.load(tmp_path)
    assert len(table) == 15 and set(table[table.optimizer == "prodigy"]["lr"]) == set(sweep.BASELINES["prodigy"])
    assert "prodigy" not in manifest["optimizers"] and manifest["baselines"] == {"prodigy": [1.0]}


@pytest.mark.parametrize("args", [
    ["--families", "nope"],
    ["--optimizers", "adam,lbfgs"],
    ["--run-seeds", "x"],
])
def test_zoo_build_usage_errors_exit_2(tmp_path, args):
    result = CliRunner().invoke(app, ["meta", "build", "--zoo", "--out", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert not any(tmp_path.iterdir())


def test_every_shipped_data_file_is_in_the_wheel_s_package_data():
    """A pip-installed (not editable) autoopt carries the recommender's data: every file under
    autoopt/recommend/data is in a listed package and matches one of its package-data patterns."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    conf = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    data = root / "autoopt" / "recommend" / "data"
    files = [p for p in data.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(data).parts)]
    assert any(p.name == "model.npz" for p in files) and any(p.name.startswith("runs-") for p in files)
    for path in files:
        package = ".".join(path.parent.relative_to(root).parts)
        assert package in conf["packages"], f"{package} is not a listed package: {path.name} would be left out"
        patterns = conf["package-data"].get(package, [])
        assert any(fnmatch.fnmatch(path.name, p) for p in patterns), f"{path} matches no package-data pattern of {package}"
