"""Write a report's plotly figures as PNG: kaleido when it works, else a matplotlib re-rendering of the same figure data.

kaleido drives a Chrome or Chromium; machines without one (most CI runners and servers) still
get PNGs, drawn with matplotlib from the figures' traces (scatter, lines, bars, heatmaps and
parallel coordinates as the report uses them).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

_logger = logging.getLogger(__name__)

PngEngine = Literal["auto", "kaleido", "matplotlib", "none"]
#: Environment override for the PNG engine (``auto``, ``kaleido``, ``matplotlib`` or ``none``).
PNG_ENGINE_ENV = "AUTOOPT_PNG_ENGINE"

# Set when kaleido failed once in this process, so later reports go straight to matplotlib.
_kaleido_broken: str | None = None


#: Seconds kaleido may take for one report's PNGs. It sometimes never returns (its Chromium
#: hangs: plotly/Kaleido#110, #134, still reported for kaleido 1.x; seen here once in a CI run,
#: `autoopt report` stuck for 240 s): past this its process group is killed and matplotlib draws
#: the PNGs. ``AUTOOPT_KALEIDO_TIMEOUT_S`` overrides it.
KALEIDO_TIMEOUT_S = 60.0
KALEIDO_TIMEOUT_ENV = "AUTOOPT_KALEIDO_TIMEOUT_S"
# What the kaleido process runs: the figures as plotly JSON on stdin, one path per figure.
_KALEIDO_CHILD = """
import json, sys
import plotly.io as pio
job = json.load(sys.stdin)
pio.write_images([pio.from_json(f) for f in job["figures"]], job["paths"], width=1100, height=700)
"""


def _export_png_kaleido(figures: dict[str, Any], paths: list[Path]) -> None:
    """kaleido in a process of its own (and its Chromium in that process's group), so a hang
    costs at most the timeout and leaves no browser behind."""
    import json
    import signal
    import subprocess
    import sys

    timeout = float(os.environ.get(KALEIDO_TIMEOUT_ENV, KALEIDO_TIMEOUT_S))
    job = json.dumps({"figures": [fig.to_json() for fig in figures.values()], "paths": [str(p) for p in paths]})
    proc = subprocess.Popen([sys.executable, "-c", _KALEIDO_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(job, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise TimeoutError(f"kaleido wrote no PNG within {timeout:g} s (stopped)") from None
    if proc.returncode != 0:
        lines = [line for line in err.strip().splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"kaleido exited with {proc.returncode}")
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
        im = ax.imshow(z, aspect="auto", cmap="RdYlGn_r" if trace.reversescale else "RdYlGn",
                       vmin=trace.zmin, vmax=trace.zmax)  # the figure's own scale, where it sets one
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


__all__ = ["KALEIDO_TIMEOUT_ENV", "PNG_ENGINE_ENV", "PngEngine", "export_png"]
