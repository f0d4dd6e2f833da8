"""Study report: plots, summary and the best optimizer config, rebuilt from Optuna storage alone.

Everything here reads only an :class:`optuna.Study` and the ``autoopt.*`` user_attrs the runner
stores on it (``autoopt.config``, ``autoopt.history``, ``autoopt.status``,
...), so ``autoopt report NAME`` can regenerate the same artifacts long after the study ran, and
the MLflow tracker logs exactly what users would regenerate.

Plots are written as HTML (plotly) and PNG. PNG export uses kaleido (which drives a Chrome or
Chromium); where that is not available it falls back to a matplotlib rendering of the same
figure data.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import pprint
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

_logger = logging.getLogger(__name__)

#: File stems of the five plots, in the order they are written.
PLOT_NAMES: tuple[str, ...] = (
    "optimization_history",
    "learning_curves",
    "optimizer_scheduler",
    "param_importances",
    "parallel_coordinates",
)

PngEngine = Literal["auto", "kaleido", "matplotlib", "none"]
#: Environment override for the PNG engine (``auto``, ``kaleido``, ``matplotlib`` or ``none``).
PNG_ENGINE_ENV = "AUTOOPT_PNG_ENGINE"

STATE_COLORS = {"complete": "#1f77b4", "pruned": "#ff7f0e", "failed": "#d62728", "running": "#7f7f7f"}

# Set when kaleido failed once in this process, so later reports go straight to matplotlib.
_kaleido_broken: str | None = None


# --------------------------------------------------------------------------------------------
# Reading the trial contract
# --------------------------------------------------------------------------------------------
def trial_status(trial: FrozenTrial) -> str:
    """complete / pruned / failed / running: the runner's ``autoopt.status`` or Optuna's state."""
    status = trial.user_attrs.get("autoopt.status")
    if status in ("complete", "pruned", "failed") and trial.state.is_finished():
        return status
    return {
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "failed",
    }.get(trial.state, "running")


def trial_history(trial: FrozenTrial) -> list[dict[str, Any]]:
    """Per-epoch records; falls back to Optuna's intermediate values (val metric only)."""
    history = trial.user_attrs.get("autoopt.history")
    if isinstance(history, list) and history:
        return [dict(h) for h in history if isinstance(h, dict) and "epoch" in h]
    return [
        {"epoch": int(step), "val_metric": float(value)}
        for step, value in sorted(trial.intermediate_values.items())
    ]


def config_from_params(params: dict[str, Any]) -> dict[str, Any]:
    """Rebuild a TrialConfig dict from namespaced Optuna params (``adamw.lr`` -> optimizer_params)."""
    optimizer = params.get("optimizer")
    scheduler = params.get("scheduler")

    def group(prefix: Any) -> dict[str, Any]:
        if not prefix:
            return {}
        head = f"{prefix}."
        return {k[len(head):]: v for k, v in params.items() if k.startswith(head)}

    return {
        "optimizer": optimizer,
        "optimizer_params": group(optimizer),
        "scheduler": scheduler or "constant",
        "scheduler_params": group(scheduler),
        "warmup_fraction": float(params.get("warmup_fraction", 0.0) or 0.0),
        "grad_clip": params.get("grad_clip"),
        "batch_size": params.get("batch_size"),
    }


def trial_config(trial: FrozenTrial) -> dict[str, Any]:
    config = trial.user_attrs.get("autoopt.config")
    if isinstance(config, dict) and config.get("optimizer"):
        return dict(config)
    return config_from_params(trial.params)


def metric_name(study: optuna.Study) -> str:
    """The task's validation metric name (``val_accuracy``, ``val_mse``...)."""
    attrs = study.user_attrs
    name = attrs.get("autoopt.metric") or (attrs.get("autoopt.traits") or {}).get("metric")
    return str(name) if name else "val_metric"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _maximize(study: optuna.Study) -> bool:
    return study.direction == optuna.study.StudyDirection.MAXIMIZE


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _finite(t.value)
    ]
    if not complete:
        return None
    pick = max if _maximize(study) else min
    return pick(complete, key=lambda t: t.value)


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------
def summarize(study: optuna.Study) -> dict[str, Any]:
    """Counts by state, best trial and the compute pruning saved (epochs and seconds).

    ``epochs_budget`` is what the same trials would have run without pruning:
    the sum of each finished trial's ``autoopt.max_epochs`` (n_trials * max_epochs).
    """
    trials = study.get_trials(deepcopy=False)
    counts = Counter(trial_status(t) for t in trials)
    spec_epochs = (study.user_attrs.get("autoopt.spec") or {}).get("epochs")
    epochs_run = epochs_budget = 0
    seconds = 0.0
    for t in trials:
        if trial_status(t) == "running":
            continue
        run = t.user_attrs.get("autoopt.epochs_run")
        run = int(run) if run is not None else len(trial_history(t))
        max_epochs = t.user_attrs.get("autoopt.max_epochs") or spec_epochs or run
        epochs_run += run
        epochs_budget += max(int(max_epochs), run)
        secs = t.user_attrs.get("autoopt.seconds")
        if _finite(secs):
            seconds += float(secs)
        elif t.datetime_start and t.datetime_complete:
            seconds += (t.datetime_complete - t.datetime_start).total_seconds()
    saved = epochs_budget - epochs_run
    best = _best_trial(study)
    return {
        "study_name": study.study_name,
        "metric": metric_name(study),
        "direction": "maximize" if _maximize(study) else "minimize",
        "n_trials": len(trials),
        "n_complete": counts.get("complete", 0),
        "n_pruned": counts.get("pruned", 0),
        "n_failed": counts.get("failed", 0),
        "n_running": counts.get("running", 0),
        "best_value": best.value if best else None,
        "best_trial": best.number if best else None,
        "best_params": dict(best.params) if best else None,
        "best_config": trial_config(best) if best else None,
        "epochs_run": epochs_run,
        "epochs_budget": epochs_budget,
        "epochs_saved": saved,
        "pruning_saved_fraction": (saved / epochs_budget) if epochs_budget else 0.0,
        "compute_seconds": seconds,
        "est_seconds_saved": (seconds / epochs_run * saved) if epochs_run else 0.0,
    }


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
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _finite(t.value))


def plot_optimization_history(study: optuna.Study):
    name = metric_name(study)
    title = f"Optimization history ({name})"
    if _n_complete(study) == 0:
        return _placeholder(title, "No completed trials yet")
    fig = optuna.visualization.plot_optimization_history(study, target_name=name)
    fig.update_layout(title=title)
    return fig


def plot_learning_curves(study: optuna.Study):
    """Validation metric and train loss per epoch for every trial; pruning/failure points marked."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    name = metric_name(study)
    best = _best_trial(study)
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
            stop = t.user_attrs.get("autoopt.stopped_at_epoch") or epochs[-1]
            point = next((h for h in history if h["epoch"] == stop), history[-1])
            reason = t.user_attrs.get("autoopt.reason") or status
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
    """Best value per optimizer x scheduler cell, with how many trials completed / ran there."""
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
            values = [t.value for t in trials if trial_status(t) == "complete" and _finite(t.value)]
            best = (max if maximize else min)(values) if values else None
            zrow.append(best)
            if not trials:
                trow.append("")
            else:
                states = Counter(trial_status(t) for t in trials)
                head = f"{best:.4g}" if best is not None else "-"
                trow.append(f"{head}<br>{states.get('complete', 0)} done, {states.get('pruned', 0)} pruned, "
                            f"{states.get('failed', 0)} failed")
        z.append(zrow)
        text.append(trow)
    fig = go.Figure(
        go.Heatmap(z=z, x=schedulers, y=optimizers, text=text, texttemplate="%{text}",
                   colorscale="RdYlGn", reversescale=not maximize,
                   colorbar={"title": {"text": f"best {name}"}}, hoverongaps=False)
    )
    fig.update_layout(title=f"Optimizer x scheduler: best {name} per cell",
                      xaxis_title="scheduler", yaxis_title="optimizer")
    return fig


def plot_param_importances(study: optuna.Study):
    name = metric_name(study)
    title = f"Hyperparameter importances for {name}"
    if _n_complete(study) < 2:
        return _placeholder(title, "Needs at least 2 completed trials")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = optuna.visualization.plot_param_importances(study, target_name=name)
    except Exception as exc:  # importance evaluators reject degenerate studies (e.g. one value)
        return _placeholder(title, f"Cannot compute importances: {exc}")
    fig.update_layout(title=title)
    return fig


def plot_parallel_coordinates(study: optuna.Study):
    name = metric_name(study)
    title = f"Parallel coordinates of completed trials ({name})"
    if _n_complete(study) == 0:
        return _placeholder(title, "No completed trials yet")
    fig = optuna.visualization.plot_parallel_coordinate(study, target_name=name)
    fig.update_layout(title=title)
    return fig


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


def snapshot(study: optuna.Study) -> optuna.Study:
    """A read-only in-memory copy of ``study``: the five plots read all trials over a hundred
    times, each a full storage query on SQLite or PostgreSQL, or a deep copy in memory (2 s of a
    24-trial report); here they are read once."""
    if isinstance(study._storage, _ReadOnlyTrials):
        return study
    storage = _ReadOnlyTrials()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line for a copy
    try:
        storage.create_new_study(study.directions, study.study_name)
    finally:
        optuna.logging.set_verbosity(verbosity)
    copy = optuna.Study(study.study_name, storage)
    for key, value in study.user_attrs.items():
        copy.set_user_attr(key, value)
    for key, value in study._storage.get_study_system_attrs(study._study_id).items():
        copy._storage.set_study_system_attr(copy._study_id, key, value)
    copy.add_trials(study.get_trials(deepcopy=False))
    return copy


def build_figures(study: optuna.Study) -> dict[str, Any]:
    """The five report figures (plotly), keyed by :data:`PLOT_NAMES`; never raises on thin data."""
    figures = {}
    for name in PLOT_NAMES:
        try:
            figures[name] = _BUILDERS[name](study)
        except Exception as exc:  # one broken plot must not cost the others
            _logger.warning("autoopt report: plot %s failed: %s", name, exc)
            figures[name] = _placeholder(name.replace("_", " "), f"Plot failed: {exc}")
    return figures


# --------------------------------------------------------------------------------------------
# PNG export: kaleido, else matplotlib
# --------------------------------------------------------------------------------------------
def _export_png_kaleido(figures: dict[str, Any], paths: list[Path]) -> None:
    import plotly.io as pio

    pio.write_images(list(figures.values()), [str(p) for p in paths], width=1100, height=700)
    missing = [p for p in paths if not p.exists() or p.stat().st_size == 0]
    if missing:
        raise RuntimeError(f"kaleido wrote no file for {missing}")


def _mpl_color(color: Any) -> Any:
    """A plotly colour ('#hex', 'rgb(r, g, b)', 'rgba(...)', named) as matplotlib accepts it."""
    from matplotlib.colors import is_color_like

    if not isinstance(color, str):
        return None
    m = re.fullmatch(r"\s*rgba?\(([^)]*)\)\s*", color)
    if m:
        parts = [float(x) for x in m.group(1).split(",")]
        rgb = tuple(min(max(v / 255.0, 0.0), 1.0) for v in parts[:3])
        return (*rgb, parts[3]) if len(parts) == 4 else rgb
    return color if is_color_like(color) else None


def _mpl_axis_key(trace: Any) -> str:
    return getattr(trace, "xaxis", None) or "x"


def _export_png_matplotlib(fig: Any, path: Path) -> None:
    """Render a plotly figure's data with matplotlib (no pyplot: no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = list(fig.data)
    layout = fig.layout
    axis_keys = sorted({_mpl_axis_key(t) for t in data if t.type in ("scatter", "scattergl", "bar")})
    n_rows = max(len(axis_keys), 1)
    mfig = Figure(figsize=(11, 3.5 * n_rows + 1), dpi=100)
    FigureCanvasAgg(mfig)
    title = layout.title.text if layout.title and layout.title.text else path.stem
    mfig.suptitle(str(title).replace("<br>", " "))

    parcoords = [t for t in data if t.type == "parcoords"]
    heatmaps = [t for t in data if t.type == "heatmap"]
    if parcoords:
        ax = mfig.add_subplot(1, 1, 1)
        trace = parcoords[0]
        dims = list(trace.dimensions)
        columns = []
        for dim in dims:
            values = [float(v) for v in dim.values]
            lo, hi = (dim.range if dim.range else (min(values), max(values))) if values else (0, 1)
            span = (hi - lo) or 1.0
            columns.append([(v - lo) / span for v in values])
        from matplotlib import colormaps

        raw = trace.line.color if trace.line is not None else None
        n_lines = len(columns[0]) if columns else 0
        colors: list[Any] = ["#1f77b4"] * n_lines
        if raw is not None and not isinstance(raw, str) and len(raw) == n_lines and n_lines:
            vals = [float(v) for v in raw]
            lo, hi = min(vals), max(vals)
            cmap = colormaps["viridis_r" if trace.line.reversescale else "viridis"]
            colors = [cmap((v - lo) / ((hi - lo) or 1.0)) for v in vals]
        for i in range(n_lines):
            ax.plot(range(len(dims)), [col[i] for col in columns], alpha=0.6, color=colors[i])
        ax.set_xticks(range(len(dims)))
        ax.set_xticklabels([str(d.label) for d in dims], rotation=30, ha="right")
        ax.set_yticks([])
    elif heatmaps:
        ax = mfig.add_subplot(1, 1, 1)
        trace = heatmaps[0]
        z = [[float("nan") if v is None else float(v) for v in row] for row in trace.z]
        im = ax.imshow(z, aspect="auto", cmap="RdYlGn_r" if trace.reversescale else "RdYlGn")
        mfig.colorbar(im, ax=ax)
        ax.set_xticks(range(len(trace.x)))
        ax.set_xticklabels(list(trace.x))
        ax.set_yticks(range(len(trace.y)))
        ax.set_yticklabels(list(trace.y))
        if trace.text is not None:
            for i, row in enumerate(trace.text):
                for j, txt in enumerate(row):
                    ax.text(j, i, str(txt).replace("<br>", "\n"), ha="center", va="center", fontsize=8)
    elif axis_keys:
        axes = {key: mfig.add_subplot(n_rows, 1, i + 1) for i, key in enumerate(axis_keys)}
        for trace in data:
            if trace.type not in ("scatter", "scattergl", "bar"):
                continue
            ax = axes[_mpl_axis_key(trace)]
            xs = list(trace.x) if trace.x is not None else []
            ys = list(trace.y) if trace.y is not None else []
            color = None
            if trace.type != "bar" and trace.line:
                color = _mpl_color(trace.line.color)
            if trace.type == "bar":
                if trace.orientation == "h":
                    ax.barh([str(y) for y in ys], [float(x) for x in xs])
                else:
                    ax.bar([str(x) for x in xs], [float(y) for y in ys])
                continue
            mode = trace.mode or "lines"
            pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
            if not pts:
                continue
            px, py = zip(*pts)
            if trace.marker and color is None:
                color = _mpl_color(trace.marker.color)
            symbol = {"x": "x", "octagon": "8"}.get(trace.marker.symbol if trace.marker else None, "o")
            label = trace.name if trace.showlegend is not False else None
            if "lines" in mode:
                ax.plot(px, py, marker="o" if "markers" in mode else None, markersize=2,
                        color=color, alpha=0.7, label=label)
            else:
                ax.scatter(px, py, marker=symbol, color=color, s=40, zorder=3, label=label)
        for key, ax in axes.items():
            suffix = key[1:]
            for letter in ("x", "y"):
                ax_layout = layout[f"{letter}axis{suffix}"] if f"{letter}axis{suffix}" in layout else None
                if ax_layout is None:
                    continue
                if ax_layout.title and ax_layout.title.text:
                    (ax.set_xlabel if letter == "x" else ax.set_ylabel)(ax_layout.title.text)
                if ax_layout.tickvals is not None and ax_layout.ticktext is not None:
                    set_ticks = ax.set_xticks if letter == "x" else ax.set_yticks
                    set_ticks(list(ax_layout.tickvals), [str(t) for t in ax_layout.ticktext],
                              rotation=30 if letter == "x" else 0)
                if ax_layout.type == "log":
                    (ax.set_xscale if letter == "x" else ax.set_yscale)("log")
            if key == "x":  # data-anchored labels, e.g. the value ticks of parallel coordinates
                for note in layout.annotations or ():
                    if note.xref in (None, "x") and note.x is not None and note.y is not None and note.text:
                        ax.text(note.x, note.y, str(note.text), fontsize=7, color="#555",
                                ha="right" if note.xanchor == "right" else "center")
            handles, labels = ax.get_legend_handles_labels()
            if labels:
                ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    else:
        ax = mfig.add_subplot(1, 1, 1)
        ax.axis("off")
        notes = [a.text for a in (layout.annotations or []) if a.text]
        ax.text(0.5, 0.5, "\n".join(notes) or "(no data)", ha="center", va="center", fontsize=14)
    mfig.tight_layout()
    mfig.savefig(path, format="png")


def export_png(figures: dict[str, Any], out_dir: Path, engine: PngEngine = "auto") -> list[Path]:
    """Write ``<name>.png`` for each figure; kaleido when it works, else matplotlib."""
    global _kaleido_broken
    engine = os.environ.get(PNG_ENGINE_ENV, engine)  # type: ignore[assignment]
    if engine == "none" or not figures:
        return []
    paths = [out_dir / f"{name}.png" for name in figures]
    if engine == "kaleido" or (engine == "auto" and _kaleido_broken is None):
        try:
            _export_png_kaleido(figures, paths)
            return paths
        except Exception as exc:
            if engine == "kaleido":
                raise
            _kaleido_broken = f"{type(exc).__name__}: {exc}"
            _logger.info("autoopt report: kaleido PNG export failed (%s); using matplotlib", _kaleido_broken)
    for (name, fig), path in zip(figures.items(), paths):
        _export_png_matplotlib(fig, path)
    return paths


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
    summary = summarize(study)
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, default=str))
    written.append(summary_path)
    written.extend(write_best_config(study, out))
    return written


# --------------------------------------------------------------------------------------------
# Best config as ready-to-paste python
# --------------------------------------------------------------------------------------------
def _differs(value: Any, default: Any) -> bool:
    try:
        return bool(tuple(value) != tuple(default)) if isinstance(value, (list, tuple)) else bool(value != default)
    except Exception:
        return True


def plain_torch_line(config: dict[str, Any]) -> str | None:
    """``torch.optim.X(model.parameters(), ...)`` equivalent of ``config``'s optimizer, read off the
    optimizer the catalog actually builds; None for wrappers and multi-group optimizers."""
    import torch

    from autoopt.catalog import get_optimizer

    try:
        spec = get_optimizer(str(config.get("optimizer")))
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        opt = spec.build(model, dict(config.get("optimizer_params") or {}))
    except Exception:
        return None
    cls = type(opt)
    module = cls.__module__
    if not (module.startswith("torch.optim") or module.startswith("pytorch_optimizer")) or cls.__name__ in ("Lookahead",):
        return None
    accepted = inspect.signature(cls.__init__).parameters
    group = max(opt.param_groups, key=lambda g: g.get("weight_decay", 0) or 0)  # the decayed group
    kwargs = {
        k: group[k]
        for k, p in accepted.items()
        if k in group and k != "params" and not isinstance(group[k], torch.Tensor)
        and (k == "lr" or p.default is inspect.Parameter.empty or _differs(group[k], p.default))
    }
    prefix = "torch.optim" if module.startswith("torch.optim") else "pytorch_optimizer"
    args = "".join(f", {k}={tuple(v) if isinstance(v, list) else v!r}" for k, v in kwargs.items())
    return f"{prefix}.{cls.__name__}(model.parameters(){args})"


def best_config_python(
    config: dict[str, Any],
    *,
    study_name: str = "",
    metric: str = "val_metric",
    value: float | None = None,
    trial_number: int | None = None,
    direction: str = "maximize",
) -> str:
    """A python snippet that rebuilds the optimizer and LR schedule of ``config`` exactly as the
    trial ran them (through autoopt's catalog and schedules), plus a plain-torch equivalent line
    where the optimizer is a single torch / pytorch-optimizer class."""
    header = f"Best optimizer config found by autoopt study {study_name!r}"
    if trial_number is not None:
        header += f" (trial {trial_number}"
        header += f", {metric}={value:.6g})" if _finite(value) else ")"
    # the study and metric names come from the storage: keep them inside the docstring
    header = header.replace("\\", "\\\\").replace('"', '\\"')
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
        "from autoopt.catalog import get_optimizer",
        "from autoopt.schedulers import build_schedule",
        "",
        f"CONFIG = {pprint.pformat(config, sort_dicts=True, width=96)}",
        f"GRAD_CLIP = {config.get('grad_clip')!r}",
        f"BATCH_SIZE = {config.get('batch_size')!r}",
        "",
        "",
        "def build_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:",
        '    return get_optimizer(CONFIG["optimizer"]).build(model, CONFIG["optimizer_params"])',
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
    best = _best_trial(study)
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
                           trial_number=best.number, direction=payload["direction"])
    )
    return [json_path, py_path]


__all__ = [
    "PLOT_NAMES",
    "best_config_python",
    "report_folder",
    "build_figures",
    "config_from_params",
    "export_png",
    "summarize",
    "trial_config",
    "trial_history",
    "trial_status",
    "write_best_config",
    "write_report",
]
