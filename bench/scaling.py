"""Comparison 4: parallel scaling. Trials per minute at 1, 2, 4, ... workers.

CPU: one CPU per trial. GPU (when torch sees one): one trial per GPU (``gpus_per_trial=1``)
against fractional GPUs packing 2, 4, 8 trials on the GPU, with GPU utilisation sampled from
``nvidia-smi`` while each study runs. Every trial trains the same configuration (AdamW + cosine,
random sampler, no pruning), so the rate measures the system, not the configurations drawn.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from typing import Any

from bench.common import Context, fmt, plt, spread, table, write_json
from bench.systems import run_autoopt

FIXED_SPACE = {"optimizers": ["adamw"], "schedulers": ["cosine"], "warmup": 0.0}


class GpuSampler:
    """Polls nvidia-smi every ``every`` seconds in a thread: utilisation % and memory MiB."""

    def __init__(self, every: float = 0.5):
        self.every, self.samples = every, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                    capture_output=True, text=True, timeout=5).stdout.strip().splitlines()[0]
                util, mem = (float(x) for x in out.split(","))
                self.samples.append((time.time(), util, mem))
            except Exception:  # noqa: BLE001
                pass
            self._stop.wait(self.every)

    def __enter__(self) -> "GpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        s = [x for x in self.samples if t0 <= x[0] <= t1]
        return {"util_mean": sum(x[1] for x in s) / len(s) if s else None,
                "util": spread([x[1] for x in s]), "mem_max_mib": max((x[2] for x in s), default=None),
                "samples": len(s)}


def _rates(run) -> dict[str, Any]:
    ends = sorted(e.t_end for e in run.events)
    first = run.extra.get("first_trial_start_s") or 0.0
    window = (ends[-1] - first) if ends else None
    return {
        "wall_s": run.wall_s,
        "trials": len(run.events),
        "trials_per_min": 60 * len(run.events) / run.wall_s,
        "trials_per_min_window": 60 * len(run.events) / window if window else None,
        "first_trial_start_s": first,
        "mean_trial_s": sum(e.seconds or 0 for e in run.events) / max(len(run.events), 1),
        "devices": run.extra.get("devices"),
    }


def run(ctx: Context) -> dict[str, Any]:
    import torch

    gpu = torch.cuda.is_available()
    if gpu:
        task, opts = "cv", {"size": 4.0}
        settings = [(1, 1.0), (2, 0.5), (4, 0.25), (8, 0.125)]
        n_trials = 16 if ctx.quick else 32
    else:
        task, opts = "cv", {"size": 0.5}
        settings = [(1, 0.0), (2, 0.0)] + ([] if ctx.quick else [(4, 0.0)])
        n_trials = 6 if ctx.quick else 12
    rows: list[dict[str, Any]] = []
    sampler = GpuSampler() if gpu and shutil.which("nvidia-smi") else None
    if sampler:
        sampler.__enter__()
    try:
        for workers, gpt in settings:
            ctx.note(f"scaling: {workers} workers, gpus_per_trial={gpt}")
            t0 = time.time()
            r = run_autoopt(task, opts, FIXED_SPACE, seed=0, n_trials=n_trials, workers=workers,
                            storage=ctx.sqlite("scaling"), tracking_uri=None, pruner="none", sampler="random",
                            system="autoopt", gpus_per_trial=gpt)
            row = {"workers": workers, "gpus_per_trial": gpt, **_rates(r)}
            if sampler:
                first = t0 + (r.extra.get("first_trial_start_s") or 0.0)
                row["gpu"] = sampler.window(first, t0 + max(e.t_end for e in r.events))
            rows.append(row)
            ctx.note(f"  {fmt(row['trials_per_min'])} trials/min overall, {fmt(row['trials_per_min_window'])} in the "
                     f"trial window, devices {row['devices']}")
    finally:
        if sampler:
            sampler.__exit__()
    base = rows[0]["trials_per_min_window"]
    for row in rows:
        row["speedup_window"] = row["trials_per_min_window"] / base if base and row["trials_per_min_window"] else None
    result = {"task": task, "task_options": opts, "gpu": gpu, "n_trials": n_trials, "rows": rows}
    name = "scaling_gpu" if gpu else "scaling"
    write_json(ctx.out / f"{name}.json", result)
    _plot(ctx, result)
    result["markdown"] = markdown(result)
    return result


def markdown(result: dict[str, Any]) -> str:
    header = ["workers", "GPU per trial", "trials/min (whole study)", "trials/min (trial window)", "speed-up",
              "mean trial s"]
    if result["gpu"]:
        header += ["GPU util % (mean)", "GPU mem MiB (max)"]
    rows = []
    for r in result["rows"]:
        line = [r["workers"], r["gpus_per_trial"] or "-", r["trials_per_min"], r["trials_per_min_window"],
                r["speedup_window"], r["mean_trial_s"]]
        if result["gpu"]:
            g = r.get("gpu") or {}
            line += [g.get("util_mean"), g.get("mem_max_mib")]
        rows.append(line)
    return table(header, rows)


def _plot(ctx: Context, result: dict[str, Any]) -> None:
    name = "scaling_gpu" if result["gpu"] else "scaling"
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(5, 3.2))
    w = [r["workers"] for r in result["rows"]]
    ax.plot(w, [r["trials_per_min_window"] for r in result["rows"]], "o-", label="trial window")
    ax.plot(w, [r["trials_per_min"] for r in result["rows"]], "s--", label="whole study")
    base = result["rows"][0]["trials_per_min_window"]
    ax.plot(w, [base * x for x in w], ":", color="grey", label="linear")
    ax.set_xscale("log", base=2)
    ax.set_xticks(w, [str(x) for x in w])
    ax.set_xlabel("parallel trials" + (" (sharing 1 GPU)" if result["gpu"] else " (1 CPU each)"))
    ax.set_ylabel("trials / minute")
    if result["gpu"]:
        ax2 = ax.twinx()
        ax2.bar(w, [(r.get("gpu") or {}).get("util_mean") or 0 for r in result["rows"]],
                width=[x * 0.3 for x in w], alpha=0.25, color="green")
        ax2.set_ylabel("GPU utilisation % (bars)")
        ax2.set_ylim(0, 100)
    ax.set_title(f"autoopt parallel scaling, {result['task']} {result['task_options']}")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(ctx.out / f"{name}.png")
    pyplot.close(fig)
