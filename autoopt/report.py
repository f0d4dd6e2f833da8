"""Study report: plots, summary and the best optimizer config, rebuilt from Optuna storage alone.

Everything here reads only an :class:`optuna.Study` and the trial record the runner stores on
it (read through :mod:`autoopt.core.record`), so ``autoopt report NAME`` can regenerate the
same artifacts long after the study ran, and the MLflow tracker logs exactly what users would
regenerate. Plots are written as HTML (plotly) and PNG (:mod:`autoopt.report_png`).
"""

from __future__ import annotations

import inspect
import json
import logging
import pprint
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoopt.core import record as R
from autoopt.core.record import trial_config, trial_history, trial_status
from autoopt.report_png import PngEngine, export_png
from autoopt.storage import storage_of

_logger = logging.getLogger(__name__)

#: File stems of the five plots, in the order they are written.
PLOT_NAMES: tuple[str, ...] = (
    "optimization_history",
    "learning_curves",
    "optimizer_scheduler",
    "param_importances",
    "parallel_coordinates",
)

STATE_COLORS = {"complete": "#1f77b4", "pruned": "#ff7f0e", "failed": "#d62728", "running": "#7f7f7f"}


def metric_name(study: optuna.Study) -> str:
    """The task's validation metric name (``val_accuracy``, ``val_mse``...)."""
    return R.metric_name(study.user_attrs) or "val_metric"


def _maximize(study: optuna.Study) -> bool:
    return study.direction == optuna.study.StudyDirection.MAXIMIZE


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def _placeholder(title: str, message: str):
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.update_layout(
        title=title,
        xaxis={"visible": False},
        yaxis={"visible": False},
        annotations=[
            {"text": message, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5, "showarrow": False,
             "font": {"size": 16}}
        ],
    )
    return fig


def _n_complete(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if R.finite(t.value))


def _optuna_plot(study: optuna.Study, plot: Any, title: str):
    """One of Optuna's own plots, retitled; a placeholder until a trial has completed."""
    name = metric_name(study)
    title = title.format(metric=name)
    if _n_complete(study) == 0:
        return _placeholder(title, "No completed trials yet")
    fig = plot(study, target_name=name)
    fig.update_layout(title=title)
    return fig


def plot_optimization_history(study: optuna.Study):
    return _optuna_plot(study, optuna.visualization.plot_optimization_history, "Optimization history ({metric})")


def plot_learning_curves(study: optuna.Study):
    """Validation metric and train loss per epoch for every trial; pruning/failure points marked."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    name = metric_name(study)
    best = R.best_trial(study)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=(name, "train_loss"))
    legend_shown: set[str] = set()
    marks: dict[str, tuple[list, list, list]] = {"pruned": ([], [], []), "failed": ([], [], [])}
    for t in study.get_trials(deepcopy=False):
        history = trial_history(t)
        if not history:
            continue
        status = trial_status(t)
        cfg = trial_config(t)
        label = f"trial {t.number}: {cfg.get('optimizer')}/{cfg.get('scheduler')} ({status})"
        is_best = best is not None and t.number == best.number
        epochs = [h["epoch"] for h in history]
        line = {"color": STATE_COLORS.get(status, "#7f7f7f"), "width": 3 if is_best else 1}
        show = status not in legend_shown
        legend_shown.add(status)
        fig.add_trace(
            go.Scatter(x=epochs, y=[h.get("val_metric") for h in history], mode="lines+markers",
                       line=line, marker={"size": 4}, opacity=1.0 if is_best or status == "complete" else 0.6,
                       name=status, legendgroup=status, showlegend=show, hovertext=label, hoverinfo="text+y"),
            row=1, col=1,
        )
        if any("train_loss" in h for h in history):
            fig.add_trace(
                go.Scatter(x=epochs, y=[h.get("train_loss") for h in history], mode="lines",
                           line=line, opacity=0.6, name=status, legendgroup=status, showlegend=False,
                           hovertext=label, hoverinfo="text+y"),
                row=2, col=1,
            )
        if status in marks:
            stop = t.user_attrs.get(R.STOPPED_AT_EPOCH) or epochs[-1]
            point = next((h for h in history if h["epoch"] == stop), history[-1])
            reason = t.user_attrs.get(R.REASON) or status
            xs, ys, texts = marks[status]
            xs.append(point["epoch"])
            ys.append(point.get("val_metric"))
            texts.append(f"trial {t.number} {status} at epoch {point['epoch']}: {reason}")
    for status, symbol in (("pruned", "x"), ("failed", "octagon")):
        xs, ys, texts = marks[status]
        if xs:
            fig.add_trace(
                go.Scatter(x=xs, y=ys, mode="markers", name=f"{status} here",
                           marker={"symbol": symbol, "size": 11, "color": STATE_COLORS[status],
                                   "line": {"width": 1, "color": "black"}},
                           hovertext=texts, hoverinfo="text"),
                row=1, col=1,
            )
    if not fig.data:
        return _placeholder("Learning curves", "No trial has reported an epoch yet")
    title = "Learning curves (x = pruned, octagon = failed"
    title += f"; thick = best trial {best.number})" if best else ")"
    fig.update_layout(title=title, height=700, hovermode="closest")
    fig.update_xaxes(title_text="epoch", row=2, col=1)
    return fig


def plot_optimizer_scheduler(study: optuna.Study):
    """Best value per optimizer x scheduler cell, with how many trials completed / ran there. A cell
    whose trials were all pruned (most cells, with pruning on) says how far they got: their best
    reported value and its epoch, in parentheses and uncoloured, since a value before the last
    epoch is not comparable with a finished trial's."""
    import plotly.graph_objects as go

    name = metric_name(study)
    maximize = _maximize(study)
    cells: dict[tuple[str, str], list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        if trial_status(t) == "running":
            continue
        cfg = trial_config(t)
        cells.setdefault((str(cfg.get("optimizer")), str(cfg.get("scheduler"))), []).append(t)
    if not cells:
        return _placeholder("Optimizer x scheduler", "No finished trials yet")
    optimizers = sorted({o for o, _ in cells})
    schedulers = sorted({s for _, s in cells})
    z, text = [], []
    for o in optimizers:
        zrow, trow = [], []
        for s in schedulers:
            trials = cells.get((o, s), [])
            values = [t.value for t in trials if trial_status(t) == "complete" and R.finite(t.value)]
            best = (max if maximize else min)(values) if values else None
            zrow.append(best)
            if not trials:
                trow.append("")
            else:
                states = Counter(trial_status(t) for t in trials)
                head = f"{best:.4g}" if best is not None else _reached_before_pruning(trials, maximize)
                trow.append(f"{head}<br>{states.get('complete', 0)} done, {states.get('pruned', 0)} pruned, "
                            f"{states.get('failed', 0)} failed")
        z.append(zrow)
        text.append(trow)
    seen = [v for row in z for v in row if v is not None]
    # the scale spans the values seen (plotly centres a single value in a range of 1: accuracy up to 1.5)
    low, high = (min(seen), max(seen)) if seen else (0.0, 1.0)
    pad = 0.0 if high > low else max(abs(high) * 1e-3, 1e-9)
    fig = go.Figure(
        go.Heatmap(z=z, x=schedulers, y=optimizers, text=text, texttemplate="%{text}",
                   colorscale="RdYlGn", reversescale=not maximize, zmin=low - pad, zmax=high + pad,
                   colorbar={"title": {"text": f"best {name}"}}, hoverongaps=False)
    )
    fig.update_layout(title=f"Optimizer x scheduler: best {name} per cell",
                      xaxis_title="scheduler", yaxis_title="optimizer")
    return fig


def _reached_before_pruning(trials: list[FrozenTrial], maximize: bool) -> str:
    """"(0.95 at epoch 4, pruned)": the best value a cell's pruned trials reported; "-" if none."""
    reached = [(h["val_metric"], h["epoch"]) for t in trials if trial_status(t) == "pruned"
               for h in trial_history(t) if R.finite(h.get("val_metric"))]
    if not reached:
        return "-"
    value, epoch = (max if maximize else min)(reached, key=lambda r: r[0])
    return f"({value:.4g} at epoch {epoch}, pruned)"


#: Below this many completed trials an importance plot is mostly noise (an evaluator fitted to a
#: few points), and its title says so: with pruning on, a 30-trial study may complete 2.
IMPORTANCE_ROUGH_BELOW = 10


def plot_param_importances(study: optuna.Study):
    """Optuna's importances (its default evaluator, on the completed trials only), titled with
    how many trials they come from: pruned trials do not count, and the parameters are those all
    of them share."""
    name = metric_name(study)
    title = f"Hyperparameter importances for {name}"
    n = _n_complete(study)
    if n < 2:
        return _placeholder(title, "Needs at least 2 completed trials")
    title += f" (from {n} completed trials" + (
        f"; fewer than {IMPORTANCE_ROUGH_BELOW}: too few to rank them, pruned trials do not count)"
        if n < IMPORTANCE_ROUGH_BELOW else ")")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = optuna.visualization.plot_param_importances(study, target_name=name)
    except Exception as exc:  # importance evaluators reject degenerate studies (e.g. one value)
        return _placeholder(title, f"Cannot compute importances: {exc}")
    fig.update_layout(title=title)
    return fig


def plot_parallel_coordinates(study: optuna.Study):
    return _optuna_plot(study, optuna.visualization.plot_parallel_coordinate,
                        "Parallel coordinates of completed trials ({metric})")


_BUILDERS = {
    "optimization_history": plot_optimization_history,
    "learning_curves": plot_learning_curves,
    "optimizer_scheduler": plot_optimizer_scheduler,
    "param_importances": plot_param_importances,
    "parallel_coordinates": plot_parallel_coordinates,
}


class _ReadOnlyTrials(optuna.storages.InMemoryStorage):
    """In-memory storage that hands out its trials without copying them (nothing here mutates them)."""

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return super().get_all_trials(study_id, deepcopy=False, states=states)


def study_parts(study: optuna.Study) -> dict[str, Any]:
    """What a report reads of a study, as plain picklable data (:func:`study_from_parts` rebuilds
    it): the report can then be drawn in another process (:mod:`autoopt.report_process`)."""
    source = storage_of(study)
    return {
        "study_name": study.study_name,
        "directions": list(study.directions),
        "user_attrs": dict(study.user_attrs),
        "system_attrs": dict(source.get_study_system_attrs(source.get_study_id_from_name(study.study_name))),
        "trials": study.get_trials(deepcopy=False),
    }


def study_from_parts(parts: dict[str, Any]) -> optuna.Study:
    """A read-only in-memory study holding :func:`study_parts`' data."""
    storage = _ReadOnlyTrials()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line for a copy
    try:
        copy_id = storage.create_new_study(parts["directions"], parts["study_name"])
    finally:
        optuna.logging.set_verbosity(verbosity)
    copy = optuna.Study(parts["study_name"], storage)
    for key, value in parts["user_attrs"].items():
        copy.set_user_attr(key, value)
    for key, value in parts["system_attrs"].items():
        storage.set_study_system_attr(copy_id, key, value)
    copy.add_trials(parts["trials"])
    return copy


def snapshot(study: optuna.Study) -> optuna.Study:
    """A read-only in-memory copy of ``study``: the five plots read all trials over a hundred
    times, each a full storage query on SQLite or PostgreSQL, or a deep copy in memory (2 s of a
    24-trial report); here they are read once."""
    if isinstance(storage_of(study), _ReadOnlyTrials):
        return study
    return study_from_parts(study_parts(study))


#: Set in a placeholder figure's ``layout.meta`` when its plot raised (see :func:`plot_errors`).
PLOT_ERROR_KEY = "autoopt_plot_error"


def build_figures(study: optuna.Study) -> dict[str, Any]:
    """The five report figures (plotly), keyed by :data:`PLOT_NAMES`; never raises.

    A plot that raises becomes a placeholder saying why, so one broken plot does not cost the
    others; :func:`plot_errors` lists those (``summary.json`` carries them as ``plot_errors``).
    """
    figures = {}
    for name in PLOT_NAMES:
        try:
            figures[name] = _BUILDERS[name](study)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            _logger.warning("autoopt report: plot %s failed: %s", name, error)
            figures[name] = _placeholder(name.replace("_", " "), f"Plot failed: {error}")
            figures[name].update_layout(meta={PLOT_ERROR_KEY: error})
    return figures


def plot_errors(figures: dict[str, Any]) -> dict[str, str]:
    """The plots that failed, with their errors (empty when every plot was drawn)."""
    return {name: fig.layout.meta[PLOT_ERROR_KEY] for name, fig in figures.items()
            if isinstance(fig.layout.meta, dict) and PLOT_ERROR_KEY in fig.layout.meta}


def write_report(
    study: optuna.Study,
    out_dir: Path | str,
    *,
    png: PngEngine = "auto",
    include_plotlyjs: bool | str = "cdn",
) -> list[Path]:
    """Write the five study plots (HTML + PNG), ``summary.json`` and the best config to ``out_dir``.

    Works purely from the Optuna study and its ``autoopt.*`` user_attrs. Returns the written
    paths. ``include_plotlyjs="cdn"`` keeps each HTML small (the viewer's browser loads plotly.js
    from the CDN); pass ``True`` to embed plotly.js for offline viewing (~4.7 MB per file).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study = snapshot(study)
    figures = build_figures(study)
    written: list[Path] = []
    for name, fig in figures.items():
        path = out / f"{name}.html"
        fig.write_html(str(path), include_plotlyjs=include_plotlyjs, full_html=True)
        written.append(path)
    written.extend(export_png(figures, out, engine=png))
    summary = {**R.summarize(study).as_dict(), "plot_errors": plot_errors(figures)}
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, default=str))
    written.append(summary_path)
    written.extend(write_best_config(study, out))
    return written


# --------------------------------------------------------------------------------------------
# Best config as ready-to-paste python
# --------------------------------------------------------------------------------------------
def plain_torch_line(config: dict[str, Any]) -> str | None:
    """See :func:`autoopt.optimizers.plain_torch_line` (imported here on use: it needs torch)."""
    from autoopt.optimizers import plain_torch_line as line

    return line(config)


def best_config_python(
    config: dict[str, Any],
    *,
    study_name: str = "",
    metric: str = "val_metric",
    value: float | None = None,
    trial_number: int | None = None,
    direction: str = "maximize",
    plain: str | None = None,
) -> str:
    """A python snippet that rebuilds the optimizer and LR schedule of ``config`` exactly as the
    trial ran them (through autoopt's catalog and schedules), plus a plain-torch equivalent line
    where the optimizer is a single torch / pytorch-optimizer class."""
    header = f"Best optimizer config found by autoopt study {study_name!r}"
    if trial_number is not None:
        header += f" (trial {trial_number}"
        header += f", {metric}={value:.6g})" if R.finite(value) else ")"
    # the study and metric names come from the storage: keep them inside the docstring
    header = header.replace("\\", "\\\\").replace('"', '\\"')
    if plain is None:  # not recorded by the trial's worker (an older study): build it here
        plain = plain_torch_line(config)
    lines = [
        f'"""{header}.',
        "",
        "build_optimizer(model) and build_lr_schedule(optimizer, epochs, steps_per_epoch) rebuild",
        "exactly what the trial trained with. Call schedule.step_batch() after every optimizer.step()",
        "and schedule.step_epoch(val_metric) after each validation; clip gradients to GRAD_CLIP",
        "(if set) before optimizer.step().",
    ]
    if plain:
        lines += ["", "Without autoopt, the optimizer is (warmup + schedule: see CONFIG):", f"    {plain}"]
    lines += [
        '"""',
        "import torch",
        "",
        "from autoopt import optimizers",
        "from autoopt.schedulers import build_schedule",
        "",
        f"CONFIG = {pprint.pformat(config, sort_dicts=True, width=96)}",
        f"GRAD_CLIP = {config.get('grad_clip')!r}",
        f"BATCH_SIZE = {config.get('batch_size')!r}",
        "",
        "",
        "def build_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:",
        '    return optimizers.build_optimizer(CONFIG["optimizer"], model, CONFIG["optimizer_params"])',
        "",
        "",
        "def build_lr_schedule(optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int):",
        "    return build_schedule(",
        '        optimizer, CONFIG["scheduler"], CONFIG["scheduler_params"],',
        '        warmup_fraction=CONFIG["warmup_fraction"], total_steps=epochs * steps_per_epoch,',
        f"        steps_per_epoch=steps_per_epoch, direction={direction!r},",
        "    )",
        "",
        "",
        'if __name__ == "__main__":',
        "    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))",
        "    optimizer = build_optimizer(model)",
        "    schedule = build_lr_schedule(optimizer, epochs=2, steps_per_epoch=5)",
        "    print(type(optimizer).__name__, schedule.lr)",
        "",
    ]
    return "\n".join(lines)


def report_folder(reports: Path | str, study_name: str) -> Path:
    """The folder for a study's report inside ``reports``. The name comes from the storage, where
    anyone who can write may have put ``../x`` or ``/abs``: a name that is not one plain path
    component becomes a slug plus a hash of it, and the result is checked to stay inside."""
    import hashlib

    root = Path(reports).resolve()
    safe = re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}", study_name) and study_name not in (".", "..")
    folder = study_name if safe else (
        f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', study_name).strip('.-')[:60] or 'study'}-"
        f"{hashlib.sha256(study_name.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}")
    path = (root / folder).resolve()
    if path.parent != root:
        raise ValueError(f"study name {study_name!r} does not give a folder inside {root}")
    return path


def write_best_config(study: optuna.Study, out_dir: Path | str) -> list[Path]:
    """``best_config.json`` and ``best_config.py`` for the best completed trial (none if no trial completed)."""
    best = R.best_trial(study)
    if best is None:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = trial_config(best)
    metric = metric_name(study)
    payload = {
        "study_name": study.study_name,
        "trial_number": best.number,
        "metric": metric,
        "direction": "maximize" if _maximize(study) else "minimize",
        "value": best.value,
        "config": config,
        "params": dict(best.params),
    }
    json_path = out / "best_config.json"
    json_path.write_text(json.dumps(payload, indent=2, default=str))
    py_path = out / "best_config.py"
    py_path.write_text(
        best_config_python(config, study_name=study.study_name, metric=metric, value=best.value,
                           trial_number=best.number, direction=payload["direction"],
                           plain=best.user_attrs.get(R.TORCH_LINE))
    )
    return [json_path, py_path]


__all__ = [
    "PLOT_NAMES",
    "best_config_python",
    "report_folder",
    "build_figures",
    "plot_errors",
    "export_png",
    "write_best_config",
    "write_report",
]
