"""The meta-dataset the recommender learns from, and the commands that build, fit and evaluate it.

One row per (study, optimizer): the study's task traits, the optimizer's best value in the
study, that value normalised against the study's other optimizers (1 = best, 0 = worst) and
its best configuration. Rows come from

* ``build``: the reference tasks' studies over a grid of batch sizes and data sizes
  (``autoopt meta build``), each optimizer measured at its catalog defaults and at sampled
  configurations;
* ``add_study_results``: any finished autoopt study (user_attrs contract in CONTEXT.md).

``fit_model`` fits :class:`~autoopt.recommend.model.OptimizerScoreModel`, saves it (npz, read by the
fast CLI) and logs it to MLflow (skops); ``evaluate`` measures it
leave-one-task-out against "always AdamW at defaults" and "rules only".

Regenerate the shipped files (autoopt/recommend/data/)::

    autoopt meta build --out autoopt/recommend/data/meta_dataset.csv --workdir /tmp/autoopt-meta
    autoopt meta fit --data autoopt/recommend/data/meta_dataset.csv --out autoopt/recommend/data
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from autoopt.core import record as R
from autoopt.core.traits import TaskTraits
from autoopt.recommend.recommender import DATA_DIR, MODEL_FILE, CatalogView, CompiledModel, Recommender, user_dir
from autoopt.recommend.rules import RuleBook

META_FILE = "meta_dataset.csv"
#: Columns of the meta-dataset CSV, in order.
META_COLUMNS: tuple[str, ...] = (
    "study",
    "task",
    "task_options",
    "domain",
    "batch_size",
    "grad_sparsity",
    "n_params",
    "dataset_size",
    "sparse_gradients",
    "metric",
    "direction",
    "optimizer",
    "n_trials",
    "n_failed",
    "best_value",
    "default_value",
    "normalized_score",
    "best_lr",
    "best_config",
    "source",
    "created",
)
_INT = {"batch_size", "n_params", "dataset_size", "n_trials", "n_failed"}
_FLOAT = {"grad_sparsity", "best_value", "default_value", "normalized_score", "best_lr"}
_JSON = {"best_config", "task_options"}
#: Trial user attr marking an optimizer's catalog-default configuration in built studies.
DEFAULT_ATTR = R.META_DEFAULT
#: Optimizers the build measures: every family the guidance discusses.
BUILD_OPTIMIZERS: tuple[str, ...] = (
    "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "nadam", "radam",
    "lion", "adafactor", "lamb", "ranger", "yogi", "schedulefree_adamw", "sparse_adam",
)
BUILD_SCHEDULERS: tuple[str, ...] = ("constant", "cosine", "linear")


def shipped_meta_path() -> Path:
    return DATA_DIR / META_FILE


def default_meta_path() -> Path:
    """Where finished studies add their rows unless told otherwise (AUTOOPT_RECOMMEND_DIR)."""
    return user_dir() / META_FILE


def default_data_paths() -> list[Path]:
    """The shipped meta-dataset plus the user's, where they exist."""
    return [p for p in (shipped_meta_path(), default_meta_path()) if p.is_file()]


# ============================================================================ reading / writing
def read_meta(paths: str | Path | Iterable[str | Path]) -> list[dict[str, Any]]:
    """Typed rows of one or more meta-dataset CSVs (later files replace earlier rows of a study)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    by_study: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"meta-dataset not found: {path}")
        fresh: dict[str, list[dict[str, Any]]] = {}
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"study", "domain", "optimizer", "normalized_score"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{path}: not a meta-dataset (missing columns {sorted(missing)})")
            for raw in reader:
                row = _typed(raw)
                fresh.setdefault(row["study"], []).append(row)
        by_study.update(fresh)
    return [r for rows in by_study.values() for r in rows]


def _typed(raw: Mapping[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for k in META_COLUMNS:
        v = raw.get(k, "")
        if v in ("", None):
            row[k] = None
        elif k in _INT:
            row[k] = int(float(v))
        elif k in _FLOAT:
            row[k] = float(v)
        elif k == "sparse_gradients":
            row[k] = str(v).strip().lower() in ("1", "true", "yes")
        elif k in _JSON:
            row[k] = json.loads(v)
        else:
            row[k] = v
    return row


def write_meta(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write rows (atomically: a temp file renamed over the target)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(META_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        out = {}
        for k in META_COLUMNS:
            v = r.get(k)
            if k in _JSON and v is not None:
                v = json.dumps(v, sort_keys=True)
            elif isinstance(v, (float, np.floating)):
                v = "" if not math.isfinite(v) else repr(float(v))
            elif isinstance(v, np.integer):
                v = int(v)
            out[k] = "" if v is None else v
        w.writerow(out)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, path)
    return path


# ============================================================================ from a study
def study_rows(study: Any) -> list[dict[str, Any]]:
    """Meta-dataset rows of one finished autoopt study (one per optimizer it tried)."""
    from optuna.trial import TrialState

    attrs = study.user_attrs
    traits = attrs.get(R.TRAITS)
    if not traits:
        raise ValueError(f"study {study.study_name!r} has no {R.TRAITS!r} user attr; is it an autoopt study?")
    direction = attrs.get(R.DIRECTION) or study.direction.name.lower()
    sign = 1.0 if direction == "maximize" else -1.0
    per_opt: dict[str, dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False):
        cfg = t.user_attrs.get(R.CONFIG)
        if not cfg or t.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        value = None
        if t.state == TrialState.COMPLETE:
            value = t.value
        elif t.state == TrialState.PRUNED and t.intermediate_values:
            value = max(t.intermediate_values.values(), key=lambda v: sign * v)  # what it reached
        if value is not None and not math.isfinite(value):
            value = None
        entry = per_opt.setdefault(cfg["optimizer"], {"n": 0, "failed": 0, "best": None, "cfg": None, "default": None})
        entry["n"] += 1
        if value is None:
            entry["failed"] += 1
            continue
        if entry["best"] is None or sign * value > sign * entry["best"]:
            entry["best"], entry["cfg"] = value, cfg
        if t.user_attrs.get(DEFAULT_ATTR):
            entry["default"] = value
    bests = {o: e["best"] for o, e in per_opt.items() if e["best"] is not None}
    hi = max((sign * v for v in bests.values()), default=None)
    lo = min((sign * v for v in bests.values()), default=None)
    created = time.strftime("%Y-%m-%dT%H:%M:%S")
    rows = []
    for opt, e in sorted(per_opt.items()):
        if len(per_opt) < 2:
            norm = math.nan  # one optimizer: nothing to compare against
        elif e["best"] is None:
            norm = 0.0  # every trial of it failed while others ran
        elif hi == lo:
            norm = 1.0
        else:
            norm = (sign * e["best"] - lo) / (hi - lo)
        cfg = e["cfg"] or {}
        rows.append(
            {
                "study": study.study_name,
                "task": attrs.get(R.TASK),
                "task_options": (attrs.get(R.SPEC) or {}).get("task_options") or None,
                "domain": traits.get("domain"),
                "batch_size": cfg.get("batch_size") or traits.get("batch_size"),
                "grad_sparsity": traits.get("grad_sparsity"),
                "n_params": traits.get("n_params"),
                "dataset_size": traits.get("dataset_size"),
                "sparse_gradients": bool(traits.get("sparse_gradients")),
                "metric": attrs.get(R.METRIC),
                "direction": direction,
                "optimizer": opt,
                "n_trials": e["n"],
                "n_failed": e["failed"],
                "best_value": e["best"],
                "default_value": e["default"],
                "normalized_score": norm,
                "best_lr": _effective_lr(cfg),
                "best_config": cfg or None,
                "source": "study",
                "created": created,
            }
        )
    return rows


def _effective_lr(cfg: Mapping[str, Any]) -> float | None:
    """The lr that drove training (None where the optimizer ignores it, e.g. Adafactor's relative step)."""
    params = cfg.get("optimizer_params") or {}
    if params.get("relative_step") is True:
        return None
    lr = params.get("lr")
    return float(lr) if isinstance(lr, (int, float)) and lr > 0 else None


def add_study_results(study: Any, path: str | Path | None = None, source: str = "study") -> int:
    """Append a finished study's rows to the meta-dataset at ``path`` (default: the user's).

    A study already in the file is replaced (re-adding a resumed study does not duplicate it).
    Returns the number of rows written for this study.
    """
    path = Path(path) if path else default_meta_path()
    rows = study_rows(study)
    for r in rows:
        r["source"] = source
    existing = [r for r in read_meta(path) if r["study"] != study.study_name] if path.is_file() else []
    write_meta(path, existing + rows)
    return len(rows)


# ============================================================================ build
@dataclass(frozen=True)
class GridPoint:
    """One study of the build: a reference task at a batch size and data size."""

    task: str
    batch_size: int
    size: float

    def study_name(self, seed: int) -> str:
        return f"meta-{self.task}-b{self.batch_size}-s{self.size:g}-seed{seed}"


def default_grid(
    tasks: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = (16, 64, 256),
    sizes: Sequence[float] = (0.5,),
) -> list[GridPoint]:
    if tasks is None:
        from autoopt.task import REFERENCE_TASKS

        tasks = list(REFERENCE_TASKS)
    return [GridPoint(t, int(b), float(s)) for t in tasks for b in batch_sizes for s in sizes]


def build(
    out: str | Path,
    grid: Sequence[GridPoint] | None = None,
    *,
    optimizers: Sequence[str] = BUILD_OPTIMIZERS,
    schedulers: Sequence[str] = BUILD_SCHEDULERS,
    trials_per_optimizer: int = 2,
    epochs: int | None = 4,
    workers: int = 2,
    workdir: str | Path | None = None,
    tracking: bool = False,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run one study per grid point and add its rows to ``out``.

    Each study first runs every applicable optimizer at its catalog defaults (enqueued, marked
    with the ``autoopt.meta.default`` user attr), then samples ``trials_per_optimizer - 1``
    more configurations per optimizer at random (lr, betas, schedule, warmup).
    """
    import optuna

    import autoopt
    from autoopt.space import SearchSpace, TrialConfig
    from autoopt.spec import SpaceSpec, StudySpec
    from autoopt.task import load_task

    grid = list(grid or default_grid())
    workdir = Path(workdir or user_dir() / "meta-build")
    workdir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(workdir / 'meta-build.db').resolve().as_posix()}"
    started = time.time()
    summary: dict[str, Any] = {"studies": [], "rows": 0, "out": str(out), "storage": storage}
    for point in grid:
        t0 = time.time()
        name = point.study_name(seed)
        options = {"size": point.size, "batch_size": point.batch_size, **({"epochs": epochs} if epochs else {})}
        task = load_task(point.task, **options)
        traits = task.traits()
        space_spec = SpaceSpec(optimizers=list(optimizers), schedulers=list(schedulers))
        space = SearchSpace(space_spec, traits)
        n_opt = len(space.optimizers)
        study = optuna.create_study(storage=storage, study_name=name, direction=task.direction, load_if_exists=True)
        if not study.trials:  # a fresh study: every optimizer's defaults first
            from autoopt.core.catalog import CATALOG

            for opt in space.optimizers:
                cfg = TrialConfig(opt, dict(CATALOG[opt].defaults()), scheduler="constant")
                study.enqueue_trial(space.to_optuna_params(cfg), user_attrs={DEFAULT_ATTR: True})
        spec = StudySpec(
            name=name,
            task=point.task,
            task_options=options,
            space=space_spec,
            n_trials=n_opt * max(1, trials_per_optimizer),
            workers=workers,
            sampler="random",
            pruner="none",
            storage=storage,
            tracking=tracking,
            seed=seed,
            description=f"autoopt meta build: {point}",
        )
        result = autoopt.run(spec)
        n = add_study_results(result.study, out, source="meta-build")
        summary["rows"] += n
        summary["studies"].append({"study": name, "rows": n, "best_value": result.best_value, "seconds": round(time.time() - t0, 1)})
        log(f"{name}: {n} rows, best {result.best_value}, {time.time() - t0:.0f}s")
    summary["seconds"] = round(time.time() - started, 1)
    return summary


# ============================================================================ fit
def fit_estimator(rows: Sequence[Mapping[str, Any]], rules: RuleBook | None = None, catalog: CatalogView | None = None, **params: Any):
    """An :class:`OptimizerScoreModel` fitted on meta-dataset rows."""
    from autoopt.recommend.model import OptimizerScoreModel

    rules = rules or RuleBook.load()
    catalog = catalog or CatalogView.current()
    params.setdefault("lr_batch_exponents", lr_batch_exponents(rules, catalog))
    model = OptimizerScoreModel(**params)
    y = [math.nan if r.get("normalized_score") is None else r["normalized_score"] for r in rows]
    lr = [r.get("best_lr") for r in rows]
    return model.fit(list(rows), y, lr=lr)


def lr_batch_exponents(rules: RuleBook, catalog: CatalogView) -> dict[str, float]:
    """optimizer -> exponent of lr ~ batch ** e, from the rules that always hold (lr_rule)."""
    advice = rules.advise(TaskTraits(domain="other"), catalog.names)
    return {name: a.lr_exponent[0] for name, a in advice.optimizers.items() if a.lr_exponent is not None}


def _rows_for_model(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The scored rows in the order the model stores them (for showing evidence)."""
    keep = ("study", "task", "batch_size", "metric", "best_value", "normalized_score", "best_lr", "best_config")
    return [{k: r.get(k) for k in keep} for r in rows if r.get("normalized_score") is not None]


def fit_model(
    data: Sequence[str | Path] | None = None,
    out_dir: str | Path | None = None,
    *,
    log_mlflow: bool = True,
    tracking_uri: str | None = None,
    experiment: str = "autoopt-recommender",
    **params: Any,
) -> dict[str, Any]:
    """Fit on the meta-dataset(s), save model.npz (what the recommender reads), log to MLflow."""
    paths = [Path(p) for p in (data or default_data_paths())]
    if not paths:
        raise FileNotFoundError("no meta-dataset: run `autoopt meta build` or pass --data")
    rows = read_meta(paths)
    out = Path(out_dir) if out_dir else user_dir()
    out.mkdir(parents=True, exist_ok=True)
    est = fit_estimator(rows, catalog=CatalogView.current(), **params)
    arrays = est.to_arrays()
    arrays["rows_json"] = np.array(json.dumps(_rows_for_model(rows), default=_jsonable))
    np.savez_compressed(out / MODEL_FILE, **arrays)
    info: dict[str, Any] = {
        "rows": len(rows),
        "scored_rows": est.n_rows_,
        "optimizers": est.encoding_.optimizers,
        "out_dir": str(out),
        "files": [str(out / MODEL_FILE)],
        "params": {k: v for k, v in est.get_params().items() if k != "lr_batch_exponents"},
    }
    if log_mlflow:
        info["mlflow"] = _log_to_mlflow(est, rows, info, tracking_uri, experiment)
    from autoopt.recommend import recommender

    recommender.reload()
    return info


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def _log_to_mlflow(est: Any, rows: Sequence[Mapping[str, Any]], info: Mapping[str, Any], tracking_uri: str | None, experiment: str) -> dict[str, Any]:
    import mlflow
    import mlflow.sklearn
    import pandas as pd
    import sklearn

    from autoopt import tracking
    from autoopt.recommend.model import SKOPS_TRUSTED_TYPES

    uri = tracking.resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        root = tracking.local_artifact_root(uri)
        mlflow.create_experiment(experiment, artifact_location=root.as_uri() if root else None)
    mlflow.set_experiment(experiment)
    example = pd.DataFrame(
        [{k: r.get(k) for k in ("domain", "batch_size", "grad_sparsity", "n_params", "dataset_size", "sparse_gradients", "optimizer")} for r in rows[:3]]
    ).astype({"batch_size": float, "grad_sparsity": float, "n_params": float, "dataset_size": float})
    with mlflow.start_run(run_name="recommender-fit") as run:
        mlflow.log_params({**info["params"], "rows": info["rows"], "scored_rows": info["scored_rows"]})
        y = np.array([r["normalized_score"] for r in rows if r.get("normalized_score") is not None])
        scored = [r for r in rows if r.get("normalized_score") is not None]
        mlflow.log_metric("train_r2", float(est.score(scored, y)))
        model_info = mlflow.sklearn.log_model(
            est,
            name="optimizer_recommender",
            input_example=example,
            pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"numpy=={np.__version__}"],
            skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
        )
    from autoopt.redaction import redact

    return {"tracking_uri": redact(uri), "run_id": run.info.run_id, "model_uri": model_info.model_uri}


# ============================================================================ evaluate
def evaluate(
    data: Sequence[str | Path] | None = None,
    *,
    rows: Sequence[Mapping[str, Any]] | None = None,
    rules: RuleBook | None = None,
    catalog: CatalogView | None = None,
    holdout: str = "task",
    measure: bool = False,
    seed: int = 0,
    trusted_tasks: Sequence[str] = (),
    **params: Any,
) -> dict[str, Any]:
    """Leave-one-task-out (``holdout="task"``): fit on the other tasks, rank for each held-out
    study, compare. ``holdout="study"`` leaves out one study at a time instead, so the model
    may learn from the same task at other batch and data sizes (evidence near the query).

    For every study of the held-out task, among the optimizers that study measured:
    regret of the top-1 choice = (best value - its value) / (best - worst value) (0 = chose the
    best; ``raw_regret`` in metric units) and whether the study's best optimizer is in the top 3.
    Strategies: the recommender (rules + model), rules only, the model alone, and always AdamW
    at its defaults (the value of AdamW's default configuration in that study).
    ``regret`` credits a chosen optimizer with its best trial in the study;
    ``regret_at_defaults`` with its catalog-default trial (like the AdamW baseline).
    ``measure=True`` also trains each strategy's top-1 *configuration* (the recommended
    hyperparameters; AdamW at catalog defaults for the baseline) once on the held-out study's
    task and reports ``measured_regret`` against the study's best (any feasible optimizer may be
    picked). Needs the ``task_options`` column and a loadable task; costs one run per strategy.
    A task import path in the data is imported only if trusted (``trusted_tasks``, see
    :mod:`autoopt.trust`): whoever wrote the file chose it.
    """
    rows = list(rows) if rows is not None else read_meta([Path(p) for p in (data or default_data_paths())])
    if measure:
        from autoopt.trust import check_trusted

        paths = {r.get("task") for r in rows if r.get("task_options") is not None and ":" in str(r.get("task") or "")}
        for path in sorted(paths):
            check_trusted(path, "the task column of the meta-dataset", trusted_tasks)
    rules = rules or RuleBook.load()
    catalog = catalog or CatalogView.current()
    if holdout not in ("task", "study"):
        raise ValueError(f"holdout {holdout!r} is not one of task, study")
    tasks = sorted({r["task"] for r in rows if r.get("task")})
    if holdout == "task" and len(tasks) < 2:
        raise ValueError("leave-one-task-out needs studies of at least 2 tasks")
    strategies = ("recommender", "rules_only", "model_only", "adamw_default")
    per_task: dict[str, Any] = {}
    all_results: dict[str, list[dict[str, float]]] = {s: [] for s in strategies}
    prior = Recommender(rules=rules, model=None, catalog=catalog)
    folds: list[tuple[str, list[Mapping[str, Any]], list[Mapping[str, Any]]]] = []
    for held in tasks:
        test = [r for r in rows if r.get("task") == held]
        if holdout == "task":
            folds.append((held, [r for r in rows if r.get("task") != held], test))
        else:
            for study in _group(test, "study"):
                folds.append((held, [r for r in rows if r["study"] != study], [r for r in test if r["study"] == study]))
    by_task: dict[str, dict[str, list[dict[str, float]]]] = {}
    cache: dict[str, Any] = {}
    for held, train, test in folds:
        est = fit_estimator(train, rules=rules, catalog=catalog, **params)
        full = Recommender(rules=rules, model=CompiledModel.from_estimator(est, _rows_for_model(train)), catalog=catalog)
        results = by_task.setdefault(held, {s: [] for s in strategies})
        for study, srows in _group(test, "study").items():
            measured = {r["optimizer"]: r for r in srows if r.get("best_value") is not None}
            if len(measured) < 2:
                continue
            r0 = srows[0]
            sign = 1.0 if r0.get("direction", "maximize") == "maximize" else -1.0
            values = {o: r["best_value"] for o, r in measured.items()}
            best_opt = max(values, key=lambda o: sign * values[o])
            defaults = [r["default_value"] for r in measured.values() if r.get("default_value") is not None]
            best = sign * values[best_opt]
            worst = min(sign * v for v in [*values.values(), *defaults])
            span = best - worst or 1.0
            traits = TaskTraits(
                domain=r0["domain"],
                batch_size=r0.get("batch_size"),
                grad_sparsity=r0.get("grad_sparsity"),
                sparse_gradients=bool(r0.get("sparse_gradients")),
                n_params=r0.get("n_params"),
                dataset_size=r0.get("dataset_size"),
            )
            ranked_full = full.rank(traits, top=None)
            rankings = {
                "recommender": [r.optimizer for r in ranked_full],
                "rules_only": prior.rank(traits, top=None).optimizers,
                "model_only": [
                    r.optimizer
                    for r in sorted(ranked_full, key=lambda r: -(r.learned_score if r.learned_score is not None else -1))
                ],
            }
            for name, order in rankings.items():
                order = [o for o in order if o in values]
                if not order:
                    continue
                pick = order[0]
                default = measured[pick].get("default_value")
                results[name].append(
                    {
                        "regret": (best - sign * values[pick]) / span,
                        "raw_regret": best - sign * values[pick],
                        "regret_at_defaults": math.nan if default is None else max(0.0, best - sign * default) / span,
                        "top3": float(best_opt in order[:3]),
                        "top1": float(pick == best_opt),
                    }
                )
            if measure:
                picks = {
                    "recommender": ranked_full[0].trial_config,
                    "rules_only": prior.rank(traits, top=1)[0].trial_config,
                    "adamw_default": _adamw_defaults(catalog),
                }
                for name, config in picks.items():
                    v = _measure(r0, config, seed, cache)
                    if v is _UNLOADABLE:
                        continue
                    regret = 1.0 if v is None else max(0.0, best - sign * v) / span
                    results[name].append({"measured_regret": regret, "measured_optimizer": config["optimizer"]})
            adamw = measured.get("adamw")
            if adamw is not None:
                v = adamw.get("default_value")
                v = adamw["best_value"] if v is None else v
                regret = max(0.0, best - sign * v) / span
                results["adamw_default"].append(
                    {
                        "regret": regret,
                        "raw_regret": max(0.0, best - sign * v),
                        "regret_at_defaults": regret,
                        "top3": math.nan,
                        "top1": float(best_opt == "adamw"),
                    }
                )
    for held, results in by_task.items():
        per_task[held] = {"studies": _n_studies(results["recommender"]), **{s: _mean(results[s]) for s in strategies}}
        for s in strategies:
            all_results[s].extend(results[s])
    return {
        "tasks": per_task,
        "overall": {"studies": _n_studies(all_results["recommender"]), **{s: _mean(all_results[s]) for s in strategies}},
        "rows": len(rows),
        "holdout": holdout,
        "method": f"leave-one-{holdout}-out; top-1 regret = (best - chosen) / (best - worst) over the optimizers "
        "the study measured (best = best value over all its trials); top3 = the study's best optimizer is "
        "among the first 3 ranked",
    }


_UNLOADABLE = object()


def _n_studies(items: list[dict[str, Any]]) -> int:
    return sum(1 for i in items if "regret" in i)


def _adamw_defaults(catalog: CatalogView) -> dict[str, Any]:
    params = {hp["name"]: hp["default"] for hp in catalog.optimizers["adamw"]["hyperparams"]}
    return {"optimizer": "adamw", "optimizer_params": params, "scheduler": "constant", "scheduler_params": {},
            "warmup_fraction": 0.0, "grad_clip": None, "batch_size": None}


def _measure(row: Mapping[str, Any], config: Mapping[str, Any], seed: int, cache: dict[str, Any]) -> Any:
    """Train ``config`` once on the study's task; its value (None if it failed), cached."""
    key = json.dumps([row.get("task"), row.get("task_options"), config, seed], sort_keys=True, default=str)
    if key in cache:
        return cache[key]
    import torch

    from autoopt.space import TrialConfig
    from autoopt.task import TaskNotFound, load_task
    from autoopt.train import train

    torch.set_num_threads(1)
    if row.get("task_options") is None:
        cache[key] = _UNLOADABLE
        return _UNLOADABLE
    try:
        task = load_task(row["task"], **row["task_options"])
    except (TaskNotFound, TypeError, ValueError):
        cache[key] = _UNLOADABLE
        return _UNLOADABLE
    try:
        out = train(task, TrialConfig.from_dict(dict(config)), seed=seed)
    except Exception as exc:  # the configuration cannot be trained here: as bad as a failed run
        warnings.warn(f"evaluate: {config['optimizer']} on {row.get('study')}: {type(exc).__name__}: {exc}", stacklevel=2)
        cache[key] = None
        return None
    cache[key] = out.value if out.status == "complete" and out.value is not None and math.isfinite(out.value) else None
    return cache[key]


def _group(rows: Iterable[Mapping[str, Any]], key: str) -> dict[Any, list[Mapping[str, Any]]]:
    out: dict[Any, list[Mapping[str, Any]]] = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    return out


def _mean(items: list[dict[str, float]]) -> dict[str, float | None]:
    if not items:
        return {"regret": None, "raw_regret": None, "regret_at_defaults": None, "top3": None, "top1": None,
                "measured_regret": None, "n": 0}
    out: dict[str, Any] = {"n": sum(1 for i in items if "regret" in i)}
    for k in ("regret", "raw_regret", "regret_at_defaults", "top3", "top1", "measured_regret"):
        vals = [i[k] for i in items if k in i and not math.isnan(i[k])]
        out[k] = round(float(np.mean(vals)), 4) if vals else None
    picks = [i["measured_optimizer"] for i in items if "measured_optimizer" in i]
    if picks:
        out["measured_picks"] = {o: picks.count(o) for o in sorted(set(picks))}
    return out
