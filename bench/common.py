"""What every comparison shares: the run context (Ray, stores, output folder), statistics, tables, plots."""

from __future__ import annotations

import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("AUTOOPT_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Context:
    """One harness invocation: mode, output folder, a work folder for stores, Ray started once."""

    quick: bool
    out: Path
    seeds: list[int]
    workers: int = 2
    log: list[str] = field(default_factory=list)
    runs: dict[str, Any] = field(default_factory=dict)  # shared SystemRuns, keyed (see bench.systems)
    tasks: list[str] | None = None  # reference tasks (default: per mode, see bench.reference)
    trials: int | None = None  # override every study's trial budget
    _pg: str | None = None

    @property
    def work(self) -> Path:
        p = self.out / "work"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def sqlite(self, name: str) -> str:
        return f"sqlite:///{(self.work / f'{name}.db').resolve()}"

    def mlflow(self, name: str) -> str:
        """A per-system MLflow store, created before anything is timed (a user's store exists)."""
        uri = f"sqlite:///{(self.work / f'mlflow-{name}.db').resolve()}"
        if not (self.work / f"mlflow-{name}.db").exists():
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri=uri).search_experiments()
        return uri

    def postgres(self) -> str | None:
        """A fresh PostgreSQL database for this run (dropped by :meth:`close`); None if unreachable."""
        if self._pg is None:
            import sqlalchemy as sa

            name = f"autoopt_bench_{uuid.uuid4().hex[:8]}"
            try:
                admin = sa.create_engine(PG_ADMIN.replace("postgresql://", "postgresql+psycopg://"),
                                         isolation_level="AUTOCOMMIT")
                with admin.connect() as c:
                    c.execute(sa.text(f'CREATE DATABASE "{name}"'))
                admin.dispose()
            except Exception as exc:  # noqa: BLE001
                self.note(f"PostgreSQL unavailable ({type(exc).__name__}: {exc}); skipping PostgreSQL rows")
                self._pg = ""
                return None
            self._pg = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
        return self._pg or None

    def close(self) -> None:
        if self._pg:
            import sqlalchemy as sa

            name = self._pg.rsplit("/", 1)[1]
            admin = sa.create_engine(PG_ADMIN.replace("postgresql://", "postgresql+psycopg://"),
                                     isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            admin.dispose()
            self._pg = ""

    def remove_work(self) -> None:
        """Delete the run's work folder (its MLflow stores and storage files) once the reports still
        drawn in the background are done: a report finishing after the deletion wrote the folder anew."""
        import shutil

        from autoopt.tracking import wait_for_reports

        wait_for_reports()
        shutil.rmtree(self.out / "work", ignore_errors=True)

    def renew_postgres(self) -> None:
        """Drop this run's PostgreSQL database; the next :meth:`postgres` makes a new, empty one."""
        self.close()
        self._pg = None

    def note(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        self.log.append(line)
        print(line, flush=True)


def start_ray(num_cpus: int | None = None, num_gpus: int | None = None) -> float:
    """Start one local Ray for the whole invocation (workers can import ``bench``); returns seconds."""
    import ray

    from bench.systems import env_for_workers

    env_for_workers(REPO)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # Tune's CSV/JSON/TBX writers off
    t0 = time.time()
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if num_cpus is not None:
        kw["num_cpus"] = num_cpus
    if num_gpus is not None:
        kw["num_gpus"] = num_gpus
    ray.init(**kw)
    return time.time() - t0


# ----------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------
def finite(xs: Iterable[float | None]) -> list[float]:
    return [float(x) for x in xs if x is not None and math.isfinite(x)]


def spread(xs: Iterable[float | None]) -> dict[str, Any]:
    """Median, min, max and count of the finite values (medians: these machines are noisy)."""
    v = finite(xs)
    if not v:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def median_interval(xs: Iterable[float | None], level: float = 0.9, resamples: int = 4000,
                    seed: int = 0) -> dict[str, Any]:
    """The middle half (quartiles) of the finite values and a bootstrap interval of their median
    (percentile method, ``level`` coverage, seeded so a report reproduces): with 5 seeds the
    min-max of a ratio spans draws, not the engine; this says how far the median itself is known."""
    v = sorted(finite(xs))
    if len(v) < 2:
        return {"q1": None, "q3": None, "lo": None, "hi": None, "n": len(v)}
    q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(v, k=len(v))) for _ in range(resamples))
    tail = (1 - level) / 2
    return {"q1": q1, "q3": q3, "lo": meds[int(tail * resamples)], "hi": meds[min(resamples - 1, int((1 - tail) * resamples))],
            "n": len(v), "level": level}


def fmt_interval(s: dict[str, Any], digits: int = 3) -> str:
    if not s or s.get("lo") is None:
        return "-"
    return f"{fmt(s['q1'], digits)}-{fmt(s['q3'], digits)}; {fmt(s['lo'], digits)}-{fmt(s['hi'], digits)}"


def censored_median(xs: list[float | None]) -> float | None:
    """Median where None means "never reached" (ranked above every reached value)."""
    if not xs:
        return None
    ranked = sorted(xs, key=lambda x: (x is None, x if x is not None else 0.0))
    n = len(ranked)
    mid = ranked[(n - 1) // 2 : n // 2 + 1]
    if any(m is None for m in mid):
        return None
    return sum(mid) / len(mid)  # type: ignore[arg-type]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or not (math.isfinite(a) and math.isfinite(b)):
        return None
    return a / b


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "-"
        if abs(x) >= 100:
            return f"{x:.0f}"
        return f"{x:.{digits}g}"
    return str(x)


def fmt_spread(s: dict[str, Any], digits: int = 3) -> str:
    if not s or s.get("median") is None:
        return "-"
    if s["n"] == 1:
        return fmt(s["median"], digits)
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}-{fmt(s['max'], digits)})"


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }
    for mod in ("torch", "optuna", "ray", "mlflow"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            info[mod] = None
    try:
        import torch

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        info["cuda"] = None
    return info


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    pyplot.rcParams.update({"figure.dpi": 80, "font.size": 9})
    return pyplot


@contextmanager
def timed() -> Iterator[dict[str, float]]:
    box = {"s": 0.0}
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box["s"] = time.perf_counter() - t0


def git_rev() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None
