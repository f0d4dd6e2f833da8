"""The recommender's meta-dataset and its fit: the zoo's dense sweep plus users' finished studies.

The meta-dataset is a table of runs, one per (task, optimizer, lr, seed), each task carrying its
measured traits:

* the zoo (``autoopt meta build --zoo``, :mod:`autoopt.recommend.sweep`): every instance of the
  generated task families trained with 15 optimizers over a 7-point lr grid, 2 seeds; shipped in
  ``autoopt/recommend/data/zoo/`` and read with :func:`autoopt.recommend.zoo_data.load`;
* users' studies (:func:`add_study_results`, called when a study finishes): every trial of the
  study is a run of the task (its family is ``study:<task>``), kept in the user's
  ``studies.csv`` (``$AUTOOPT_RECOMMEND_DIR``).

:func:`fit_model` turns the runs into normalised regret per task (:mod:`autoopt.recommend.regret`),
chooses the estimator by leave-family-out cross-validation, fits
:class:`~autoopt.recommend.model.RegretModel` on every task, saves it as plain arrays (model.npz,
what ``autoopt recommend`` loads) and logs it to MLflow. Regenerate the shipped model::

    autoopt meta fit --zoo --out autoopt/recommend/data --no-mlflow
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from autoopt.core import record as R
from autoopt.recommend.recommender import DATA_DIR, MODEL_FILE, user_dir

STUDIES_FILE = "studies.csv"
#: Columns of the users' study runs (a zoo run's columns plus its task's traits).
STUDY_COLUMNS: tuple[str, ...] = (
    "instance", "family", "domain", "batch_size", "n_params", "dataset_size", "grad_sparsity", "sparse_gradients",
    "metric", "direction", "optimizer", "lr", "seed", "status", "value", "created", "curve", "grad_rms",
)


def zoo_dir() -> Path:
    """The shipped zoo meta-dataset."""
    return DATA_DIR / "zoo"


def default_studies_path() -> Path:
    """Where finished studies add their runs unless told otherwise (AUTOOPT_RECOMMEND_DIR)."""
    return user_dir() / STUDIES_FILE


# ============================================================================ users' studies
def study_runs(study: Any) -> list[dict[str, Any]]:
    """The runs of one finished autoopt study: one per trial that set an lr."""
    from optuna.trial import TrialState

    attrs = study.user_attrs
    traits = attrs.get(R.TRAITS)
    if not traits:
        raise ValueError(f"study {study.study_name!r} has no {R.TRAITS!r} user attr; is it an autoopt study?")
    direction = attrs.get(R.DIRECTION) or study.direction.name.lower()
    created = time.strftime("%Y-%m-%dT%H:%M:%S")
    rows = []
    for t in study.get_trials(deepcopy=False):
        cfg = t.user_attrs.get(R.CONFIG)
        if not cfg or t.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        lr = _effective_lr(cfg)
        if lr is None:
            continue
        value = t.value if t.state == TrialState.COMPLETE else None
        ok = value is not None and math.isfinite(value)
        rows.append({
            "instance": study.study_name, "family": f"study:{attrs.get(R.TASK) or study.study_name}",
            "domain": traits.get("domain"), "batch_size": cfg.get("batch_size") or traits.get("batch_size"),
            "n_params": traits.get("n_params"), "dataset_size": traits.get("dataset_size"),
            "grad_sparsity": traits.get("grad_sparsity"), "sparse_gradients": bool(traits.get("sparse_gradients")),
            "grad_rms": traits.get("grad_rms"), "metric": attrs.get(R.METRIC), "direction": direction,
            "optimizer": cfg["optimizer"], "lr": lr,
            "seed": t.number, "status": "ok" if ok else ("pruned" if t.state == TrialState.PRUNED else "failed"),
            "value": value if ok else math.nan, "created": created, "curve": _curve_of(t),
        })
    return rows


def _curve_of(trial: Any) -> tuple[list[int], list[float]] | None:
    """A trial's reported curve (steps, values), as the learning-curve pruner reads it; None if none."""
    from autoopt.pruners import trial_curve

    steps, values = trial_curve(trial)
    return (steps, values) if steps else None


def _curve_text(curve: tuple[list[int], list[float]] | None) -> str | None:
    """``[[epoch, value], ...]``: how studies.csv stores a curve."""
    return json.dumps([[s, v] for s, v in zip(*curve)], separators=(",", ":")) if curve else None


def _parse_curve(raw: Any) -> tuple[list[int], list[float]] | None:
    if not raw:
        return None
    try:
        points = json.loads(raw)
        return [int(p[0]) for p in points], [float(p[1]) for p in points]
    except (ValueError, TypeError, IndexError):
        return None  # a hand-edited file: the run still counts, without its curve


def _effective_lr(cfg: Mapping[str, Any]) -> float | None:
    """The lr that drove training (None where the optimizer ignores it, e.g. Adafactor's relative step)."""
    params = cfg.get("optimizer_params") or {}
    if params.get("relative_step") is True:
        return None
    lr = params.get("lr")
    return float(lr) if isinstance(lr, (int, float)) and lr > 0 else None


def read_studies(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"instance", "optimizer", "lr", "status", "value"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: not a studies file (missing columns {sorted(missing)})")
        rows = []
        for raw in reader:
            row: dict[str, Any] = dict(raw)
            for k in ("batch_size", "n_params", "dataset_size", "seed"):
                row[k] = int(float(raw[k])) if raw.get(k) not in (None, "") else None
            for k in ("grad_sparsity", "lr", "value"):
                row[k] = float(raw[k]) if raw.get(k) not in (None, "") else math.nan
            # a column added 2026-12-06: files written before have none
            row["grad_rms"] = float(raw["grad_rms"]) if raw.get("grad_rms") not in (None, "") else None
            row["sparse_gradients"] = str(raw.get("sparse_gradients", "")).lower() in ("1", "true", "yes")
            row["curve"] = _parse_curve(raw.get("curve"))  # files written before curves were kept: None
            rows.append(row)
        return rows


def studies_not_learned(learned: Sequence[str], path: str | Path | None = None) -> list[str]:
    """The user's finished studies (``path``, default the user's) that a model fitted on the
    ``learned`` instances has not learned from, and that ``meta fit`` would: those with at least
    one configuration whose every run finished, as :func:`regret.task_grids` needs. A study whose
    runs all failed or were pruned is not counted (a refit would not learn from it either).

    Reads only the columns it needs, with no pandas: ``autoopt recommend`` calls it.
    """
    from autoopt.recommend.sweep import BASELINES

    path = Path(path) if path else default_studies_path()
    known = set(learned)
    configs: dict[str, dict[tuple[str, float], bool]] = {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                instance, optimizer = row.get("instance") or "", row.get("optimizer") or ""
                if not instance or instance in known or optimizer in BASELINES:
                    continue
                try:
                    lr = float(row.get("lr") or "nan")
                    value = float(row.get("value") or "nan")
                except ValueError:
                    continue
                if not lr > 0:
                    continue
                key = (optimizer, round(math.log10(lr), 6))
                mine = configs.setdefault(instance, {})
                mine[key] = mine.get(key, True) and row.get("status") == "ok" and math.isfinite(value)
    except (OSError, UnicodeDecodeError, csv.Error):
        return []  # no studies yet, or an unreadable file: `meta fit` says what is wrong with it
    return [instance for instance, by_config in configs.items() if any(by_config.values())]


def add_study_results(study: Any, path: str | Path | None = None) -> int:
    """Add a finished study's runs to the users' meta-dataset at ``path`` (default: the user's).

    A study already there is replaced (re-adding a resumed study does not duplicate it). The
    next ``autoopt meta fit`` learns from it. Returns the number of runs written.
    """
    path = Path(path) if path else default_studies_path()
    rows = study_runs(study)
    existing = [r for r in read_studies(path) if r["instance"] != study.study_name] if path.is_file() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(STUDY_COLUMNS), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in existing + rows:
        r = {**r, "curve": _curve_text(r.get("curve"))}
        w.writerow({k: ("" if r.get(k) is None or (isinstance(r.get(k), float) and math.isnan(r[k])) else r[k])
                    for k in STUDY_COLUMNS})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, path)
    return len(rows)


def similar_curves(traits: Any, metric: str | None, direction: str, *, k: int = 3,
                   path: str | Path | None = None, exclude: str | None = None) -> list[tuple[list[int], list[float]]]:
    """Finished trials' curves from the ``k`` users' studies nearest to ``traits`` (same domain,
    metric and direction; nearest by batch size, model and data size, log scale), for the
    learning-curve pruner; ``exclude``: a study's own name (a resumed study is in there already).
    Empty when the meta-dataset holds none (a first study)."""
    from autoopt.core.traits import TaskTraits

    path = Path(path) if path else default_studies_path()
    if not path.is_file():
        return []
    t = TaskTraits.from_any(traits) if not isinstance(traits, TaskTraits) else traits
    by_study: dict[str, list[dict[str, Any]]] = {}
    for r in read_studies(path):
        if r.get("curve") and r["instance"] != exclude and r.get("domain") == t.domain and r.get("direction") == direction and \
                (metric is None or r.get("metric") == metric):
            by_study.setdefault(r["instance"], []).append(r)

    def log_gap(a: Any, b: Any, base: float) -> float:
        return abs(math.log(a, base) - math.log(b, base)) if a and b and a > 0 and b > 0 else 0.0

    def distance(r: dict[str, Any]) -> float:
        return (log_gap(r.get("batch_size"), t.batch_size, 2.0) + log_gap(r.get("n_params"), t.n_params, 10.0)
                + log_gap(r.get("dataset_size"), t.dataset_size, 10.0))

    nearest = sorted(by_study, key=lambda name: (distance(by_study[name][0]), name))[:k]
    return [r["curve"] for name in nearest for r in by_study[name]]


# ============================================================================ the table
def load_table(zoo: str | Path | None = None, *, journals: bool = False, studies: Sequence[str | Path] | None = None) -> tuple[Any, dict[str, Any]]:
    """(runs of the zoo at ``zoo`` plus the users' studies, the zoo's manifest).

    ``journals``: also the zoo's chunks still in progress. ``studies``: study files (default
    the user's, where it exists).
    """
    import pandas as pd

    from autoopt.recommend import zoo_data

    table, manifest = zoo_data.load(zoo if zoo is not None else zoo_dir(), journals=journals)
    paths = [Path(p) for p in studies] if studies is not None else [p for p in [default_studies_path()] if p.is_file()]
    extra = [{k: v for k, v in r.items() if k != "curve"} for p in paths for r in read_studies(p)]
    if extra:
        table = pd.concat([table, pd.DataFrame(extra)], ignore_index=True)
    return table, manifest


def grids_from(zoo: str | Path | None = None, *, journals: bool = False, studies: Sequence[str | Path] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(task grids of the meta-dataset, a summary: runs, tasks, families, manifest)."""
    from autoopt.recommend.regret import task_grids

    table, manifest = load_table(zoo, journals=journals, studies=studies)
    grids = task_grids(table)
    summary = {
        "runs": int(len(table)),
        "tasks": len(grids),
        "families": len({g.family for g in grids.values()}),
        "zoo_created": manifest.get("created"),
        "zoo_updated": manifest.get("updated"),
        "zoo_chunks": sorted(manifest.get("chunks", {})) if isinstance(manifest.get("chunks"), dict) else None,
    }
    return grids, summary


# ============================================================================ fit
def fit_estimator(grids: Mapping[str, Any], *, select: bool = True, catalog: dict | None = None, **params: Any) -> tuple[Any, list[dict[str, Any]]]:
    """(a :class:`RegretModel` fitted on every task of ``grids``, the selection's CV table).

    ``select``: choose the estimator by leave-family-out CV on these tasks only (explicit
    ``params`` win over the choice).
    """
    from autoopt.recommend.model import CANDIDATES, RegretModel, select_estimator
    from autoopt.recommend.regret import training_rows

    chosen, table = select_estimator(grids, catalog=catalog) if select else (dict(CANDIDATES[0]), [])
    rows = training_rows(grids)
    if not rows:
        raise ValueError("the meta-dataset has no finished runs to learn from")
    model = RegretModel(catalog=catalog, **{**chosen, **params})
    return model.fit(rows, [r["regret"] for r in rows]), table


def fit_model(
    zoo: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    journals: bool = False,
    studies: Sequence[str | Path] | None = None,
    log_mlflow: bool = True,
    tracking_uri: str | None = None,
    experiment: str = "autoopt-recommender",
    select: bool = True,
    **params: Any,
) -> dict[str, Any]:
    """Fit on the meta-dataset, save model.npz (what the recommender reads), log to MLflow."""
    grids, summary = grids_from(zoo, journals=journals, studies=studies)
    if not grids:
        raise ValueError("the meta-dataset holds no finished task yet: run `autoopt meta build --zoo` first")
    out = Path(out_dir) if out_dir else user_dir()
    out.mkdir(parents=True, exist_ok=True)
    est, cv = fit_estimator(grids, select=select, **params)
    arrays = est.to_arrays()
    np.savez_compressed(out / MODEL_FILE, **arrays)
    info: dict[str, Any] = {
        **summary,
        "rows": est.n_rows_,
        "optimizers": est.encoding_.optimizers,
        "out_dir": str(out),
        "files": [str(out / MODEL_FILE)],
        "params": {k: v for k, v in est.get_params().items() if k != "catalog"},
        "selection": cv,
        #: the user's finished studies among the tasks (their family is "study:<task>")
        "studies": sorted(k for k, g in grids.items() if str(g.family).startswith("study:")),
    }
    if log_mlflow:
        info["mlflow"] = _log_to_mlflow(est, info, tracking_uri, experiment)
    from autoopt.recommend import recommender

    recommender.reload()
    return info


def _log_to_mlflow(est: Any, info: Mapping[str, Any], tracking_uri: str | None, experiment: str) -> dict[str, Any]:
    import mlflow

    from autoopt import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri)
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI, which would send every later
    # study and subprocess of the caller's process to this store: put the variable back after
    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        return _log_fit_run(mlflow, est, info, uri, experiment)
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def _log_fit_run(mlflow: Any, est: Any, info: Mapping[str, Any], uri: str, experiment: str) -> dict[str, Any]:
    import mlflow.sklearn
    import pandas as pd
    import sklearn

    from autoopt import tracking
    from autoopt.recommend.model import SKOPS_TRUSTED_TYPES

    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        root = tracking.local_artifact_root(uri)
        mlflow.create_experiment(experiment, artifact_location=root.as_uri() if root else None)
    mlflow.set_experiment(experiment)
    example = pd.DataFrame([{"domain": "cv", "batch_size": 64.0, "grad_sparsity": 0.1, "n_params": 5e4,
                             "dataset_size": 4e3, "sparse_gradients": False, "optimizer": est.encoding_.optimizers[0],
                             "lr": 1e-3}])
    with mlflow.start_run(run_name="recommender-fit") as run:
        mlflow.log_params({**info["params"], "rows": info["rows"], "tasks": info["tasks"], "families": info["families"]})
        for c in info.get("selection") or []:
            mlflow.log_metric(f"cv_{c['estimator']}_leaf{c['min_samples_leaf']}", c["cv_regret_at_picked_lr"])
        model_info = mlflow.sklearn.log_model(
            est,
            name="optimizer_recommender",
            input_example=example,
            pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"numpy=={np.__version__}"],
            skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
        )
    from autoopt.redaction import redact

    return {"tracking_uri": redact(uri), "run_id": run.info.run_id, "model_uri": model_info.model_uri}


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def dumps(result: Any) -> str:
    return json.dumps(result, indent=2, default=_jsonable)
