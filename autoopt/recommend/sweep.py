"""The zoo's ground truth: every instance trained with every sweep optimizer over a dense lr grid.

One *unit* of work is (instance, optimizer): its 7 lrs x 2 seeds run in one Ray task, so the
task's data is built once and Ray's per-task overhead is paid once per 14 runs. Work is ordered
round-robin over families in *chunks* (chunk N = the N-th instance of every family), so partial
data already covers every family. Each finished unit is appended to a journal in the output
folder; when a chunk's units are all done its rows become ``runs-NN.csv.gz``. A restarted build
reads the chunk files and journals and runs only what is missing.

Files (the package ships them from ``autoopt/recommend/data/zoo/``; read them with
:func:`autoopt.recommend.zoo_data.load`):

* ``MANIFEST.json``: schema version, command, versions, dates, optimizers, seeds, the lr grid
  of every family, the schedule policy and the chunks;
* ``instances.csv``: one row per instance: knobs and measured traits;
* ``runs-NN.csv.gz``: one row per run (:data:`RUN_COLUMNS`).
"""

from __future__ import annotations

import csv
import datetime as _dt
import gzip
import io
import json
import math
import os
import shlex
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

SCHEMA_VERSION = 1
#: The optimizers every instance is swept with (catalog names).
OPTIMIZERS: tuple[str, ...] = (
    "sgd", "momentum", "nesterov", "adam", "adamw", "nadam", "radam", "rmsprop", "adagrad",
    "lamb", "lion", "adabelief", "schedulefree_adamw", "ranger", "adafactor",
)
#: Fixed configurations a practitioner runs without tuning, swept only at these lrs for the
#: evaluation's baselines (issue 11: "Prodigy at lr 1.0"). Never part of a task's grid: they
#: neither move its normalisation (best, median) nor enter the recommender's training data.
BASELINES: dict[str, tuple[float, ...]] = {"prodigy": (1.0,)}
SEEDS: tuple[int, ...] = (0, 1)
LR_POINTS = 7
#: Spacing of the lr grid in decades (7 points span 3 decades).
LR_STEP_DECADES = 0.5
#: log10 of the centre of each optimizer's grid before the family's shift. Chosen around the
#: catalog's lr range so that, for a few hundred steps on small models, the best lr is inside.
LR_CENTER_LOG10: dict[str, float] = {
    "sgd": -1.0, "momentum": -1.5, "nesterov": -1.5, "adagrad": -1.5,
    "adam": -2.5, "adamw": -2.5, "nadam": -2.5, "adabelief": -2.5, "schedulefree_adamw": -2.5,
    # RAdam's rectification damps its first hundred steps (beta2 = 0.999), and Ranger is RAdam
    # inside: in runs this short their best lr sits a decade above Adam's.
    "radam": -1.5, "ranger": -1.5,
    # Adafactor (relative_step=False) scales its step by each weight's RMS.
    "adafactor": -1.5, "lamb": -2.0, "rmsprop": -3.0, "lion": -3.0,
}
#: One schedule policy for the whole sweep: 5% linear warmup, then cosine to zero;
#: schedule-free AdamW keeps the warmup and no decay (it must not be scheduled).
SCHEDULE = {"scheduler": "cosine", "warmup_fraction": 0.05}
SCHEDULE_FREE = {"scheduler": "constant", "warmup_fraction": 0.05}
#: Hyperparameters the sweep sets away from the catalog's defaults, and why: Adafactor's default
#: relative step size ignores the lr (and the schedule), which would make its lr grid seven copies.
SWEEP_PARAMS: dict[str, dict[str, Any]] = {"adafactor": {"relative_step": False}}
RUN_COLUMNS: tuple[str, ...] = (
    "instance", "optimizer", "lr", "seed", "status", "value", "final_train_loss", "seconds", "reason",
)
INSTANCE_COLUMNS: tuple[str, ...] = (
    "instance", "family", "domain", "knobs", "batch_size", "n_params", "dataset_size", "grad_sparsity",
    "sparse_gradients", "metric", "direction", "steps", "grad_rms",
)
MANIFEST = "MANIFEST.json"
INSTANCES = "instances.csv"
JOURNAL_DIR = ".journal"
#: Seconds between progress lines in the log (besides one per sealed chunk).
LOG_EVERY_S = 120.0
#: Units in a row Ray may lose (a dead worker or node) before the build stops.
MAX_LOST_IN_A_ROW = 3


def default_out_dir() -> Path:
    """Where the shipped meta-dataset lives (and where ``meta build --zoo`` writes by default)."""
    return Path(__file__).with_name("data") / "zoo"


def lr_grid(optimizer: str, lr_shift: float = 0.0) -> list[float]:
    """The optimizer's :data:`LR_POINTS` log-spaced lrs, shifted by the family's ``lr_shift`` decades."""
    if optimizer not in LR_CENTER_LOG10:
        raise ValueError(f"no lr grid for optimizer {optimizer!r}; sweep optimizers: {', '.join(OPTIMIZERS)}")
    centre = LR_CENTER_LOG10[optimizer] + lr_shift
    half = (LR_POINTS - 1) / 2
    return [float(f"{10 ** (centre + (i - half) * LR_STEP_DECADES):.6g}") for i in range(LR_POINTS)]


SGD_FAMILY = ("sgd", "momentum", "nesterov")


def family_lr_grid(family: Any, optimizer: str) -> list[float]:
    """The grid a zoo family is swept on: its ``lr_shift``, plus ``sgd_lr_shift`` for the SGD
    family; a baseline's fixed lrs (:data:`BASELINES`) on every family."""
    if optimizer in BASELINES:
        return list(BASELINES[optimizer])
    return lr_grid(optimizer, family.lr_shift + (family.sgd_lr_shift if optimizer in SGD_FAMILY else 0.0))


def chunk_of(instance_id: str) -> int:
    """1-based chunk of an instance: its index in its family, plus one."""
    return int(instance_id.rpartition("-")[2]) + 1


def chunk_file(chunk: int) -> str:
    return f"runs-{chunk:02d}.csv.gz"


def trial_config(optimizer: str, lr: float) -> Any:
    from autoopt.space import TrialConfig

    policy = SCHEDULE_FREE if optimizer == "schedulefree_adamw" else SCHEDULE
    return TrialConfig(optimizer, {**SWEEP_PARAMS.get(optimizer, {}), "lr": lr}, scheduler=policy["scheduler"],
                       warmup_fraction=policy["warmup_fraction"])


# ============================================================================ one unit of work
_TASKS: "OrderedDict[str, Any]" = OrderedDict()


def _task(instance_id: str) -> Any:
    """The instance's task, cached per worker process (its data is built once for many units)."""
    from autoopt.tasks.zoo import load_instance

    if instance_id not in _TASKS:
        task = load_instance(instance_id)
        task.datasets()  # built here, so a run's seconds are training only
        _TASKS[instance_id] = task
        while len(_TASKS) > 4:
            _TASKS.popitem(last=False)
    _TASKS.move_to_end(instance_id)
    return _TASKS[instance_id]


def run_unit(instance_id: str, optimizer: str, points: Sequence[tuple[float, int]], device: str = "cpu") -> list[dict[str, Any]]:
    """Train ``instance_id`` with ``optimizer`` at each (lr, seed); one row per run."""
    import torch

    from autoopt.train import train

    torch.set_num_threads(1)
    task = _task(instance_id)
    rows = []
    for lr, seed in points:
        outcome = train(task, trial_config(optimizer, lr), seed=seed, device=device)
        reason = outcome.reason or ""
        status = "ok" if outcome.status == "complete" else ("diverged" if reason.startswith("diverged") else "failed")
        value = outcome.value if status == "ok" and outcome.value is not None else math.nan
        rows.append({
            "instance": instance_id, "optimizer": optimizer, "lr": lr, "seed": seed, "status": status,
            "value": value,
            "final_train_loss": outcome.history[-1].train_loss if outcome.history else math.nan,
            "seconds": round(outcome.seconds, 3), "reason": reason[:300],
        })
    return rows


def describe_instance(instance_id: str) -> dict[str, Any]:
    """The instance's row of ``instances.csv`` (traits measured on real backward passes)."""
    import torch

    torch.set_num_threads(1)
    return _task(instance_id).describe_instance()


# ============================================================================ files
def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.7g}"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _csv_text(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_fmt(r.get(c)) for c in columns])  # a column added later: empty
    return buf.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_runs(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """A gzip-compressed runs CSV (mtime 0: same rows, same bytes)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(_csv_text(RUN_COLUMNS, rows).encode())
    _atomic_write(path, buf.getvalue())


def _typed_run(raw: dict[str, str]) -> dict[str, Any]:
    return {
        "instance": raw["instance"], "optimizer": raw["optimizer"], "lr": float(raw["lr"]), "seed": int(raw["seed"]),
        "status": raw["status"], "value": float(raw["value"]), "final_train_loss": float(raw["final_train_loss"]),
        "seconds": float(raw["seconds"]), "reason": raw.get("reason", ""),
    }


def read_runs(path: Path) -> list[dict[str, Any]]:
    """Rows of a runs file (``.csv.gz`` or a plain-CSV journal), typed."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(RUN_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: not a zoo runs file (missing columns {sorted(missing)})")
        rows = []
        for raw in reader:
            if None in raw.values() or None in raw:  # a journal line cut short by an interruption
                continue
            rows.append(_typed_run(raw))
        return rows


def read_instances(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = []
        for raw in csv.DictReader(f):
            rows.append({
                **raw, "knobs": json.loads(raw["knobs"]), "batch_size": int(raw["batch_size"]),
                "n_params": int(raw["n_params"]), "dataset_size": int(raw["dataset_size"]),
                "grad_sparsity": float(raw["grad_sparsity"]), "sparse_gradients": raw["sparse_gradients"] == "true",
                "steps": int(raw["steps"]),
                # added 2026-12-06; an instances file written before has no such column
                "grad_rms": float(raw["grad_rms"]) if raw.get("grad_rms") not in (None, "") else None,
            })
        return rows


def run_key(row: dict[str, Any]) -> tuple[str, str, float, int]:
    return (row["instance"], row["optimizer"], float(f"{row['lr']:.6g}"), int(row["seed"]))


# ============================================================================ the build
@dataclass
class SweepPlan:
    """What a build covers: instances (round-robin order), optimizers, seeds and each family's grid."""

    instances: list[str]
    optimizers: list[str]
    seeds: list[int]
    grids: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @classmethod
    def make(cls, families: Sequence[str] | None = None, limit: int | None = None,
             optimizers: Sequence[str] | None = None, seeds: Sequence[int] | None = None) -> "SweepPlan":
        from autoopt.core.catalog import CATALOG
        from autoopt.tasks.zoo import FAMILIES, instances

        ids = instances(list(families) if families else None)
        if limit is not None:
            if limit < 1:
                raise ValueError(f"limit must be >= 1 (instances per family), got {limit}")
            ids = [i for i in ids if chunk_of(i) <= limit]
        opts = list(optimizers) if optimizers else [*OPTIMIZERS, *BASELINES]
        unknown = [o for o in opts if o not in CATALOG or (o not in LR_CENTER_LOG10 and o not in BASELINES)]
        if unknown:
            raise ValueError(f"optimizer(s) {unknown} not in the sweep; choose from {', '.join([*OPTIMIZERS, *BASELINES])}")
        fams = list(dict.fromkeys(i.rpartition("-")[0] for i in ids))
        grids = {f: {o: family_lr_grid(FAMILIES[f], o) for o in opts} for f in fams}
        return cls(ids, opts, list(seeds) if seeds is not None else list(SEEDS), grids)

    def on_grid(self, row: dict[str, Any]) -> bool:
        """Whether a run row sits on this plan's grid (rows of families or optimizers it does not cover do)."""
        grid = self.grids.get(row["instance"].rpartition("-")[0], {}).get(row["optimizer"])
        return grid is None or float(f"{row['lr']:.6g}") in {float(f"{lr:.6g}") for lr in grid}

    def units(self) -> list[tuple[str, str]]:
        return [(i, o) for i in self.instances for o in self.optimizers]

    def points(self, instance_id: str, optimizer: str) -> list[tuple[float, int]]:
        grid = self.grids[instance_id.rpartition("-")[0]][optimizer]
        return [(lr, s) for lr in grid for s in self.seeds]

    @property
    def total_runs(self) -> int:
        return sum(len(self.points(i, o)) for i, o in self.units())


class ZooStore:
    """The output folder: completed chunk files, journals of chunks in progress, instances, manifest."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.journal_dir = self.out / JOURNAL_DIR
        self.rows: dict[tuple, dict[str, Any]] = {}
        self.instances: dict[str, dict[str, Any]] = {}

    def load(self) -> "ZooStore":
        if (self.out / INSTANCES).is_file():
            self.instances = {r["instance"]: r for r in read_instances(self.out / INSTANCES)}
        for path in sorted(self.out.glob("runs-*.csv.gz")):
            for r in read_runs(path):
                self.rows[run_key(r)] = r
        for path in sorted(self.journal_dir.glob("runs-*.csv")) if self.journal_dir.is_dir() else []:
            for r in read_runs(path):
                self.rows[run_key(r)] = r
        return self

    def missing(self, instance_id: str, optimizer: str, points: Sequence[tuple[float, int]]) -> list[tuple[float, int]]:
        """The (lr, seed) points of a unit that have no row yet."""
        return [(lr, s) for lr, s in points if (instance_id, optimizer, float(f"{lr:.6g}"), s) not in self.rows]

    def journal(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append a unit's rows to its chunk's journal (flushed: an interruption loses at most this unit)."""
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        path = self.journal_dir / chunk_file(chunk_of(rows[0]["instance"]))[: -len(".gz")]
        fresh = not path.exists() or path.stat().st_size == 0
        cut = False  # the last line was cut short by an interruption: start on a new line
        if not fresh:
            with path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                cut = f.read(1) != b"\n"
        with path.open("a", encoding="utf-8", newline="") as f:
            text = _csv_text(RUN_COLUMNS, rows)
            f.write(text if fresh else ("\n" if cut else "") + text.split("\n", 1)[1])
            f.flush()
            os.fsync(f.fileno())
        for r in rows:
            self.rows[run_key(r)] = r

    def seal_chunk(self, chunk: int, order: dict[str, int], opt_order: dict[str, int], plan: SweepPlan) -> int:
        """Write ``runs-NN.csv.gz`` from every known row of the chunk and drop its journal.

        Rows off the plan's grid of their (family, optimizer) -- left by an earlier grid -- are
        dropped, so every instance keeps exactly the grid the manifest states.
        """
        rows = [r for r in self.rows.values() if chunk_of(r["instance"]) == chunk and plan.on_grid(r)]
        rows.sort(key=lambda r: (order.get(r["instance"], len(order)), r["instance"],
                                 opt_order.get(r["optimizer"], len(opt_order)), r["optimizer"], r["lr"], r["seed"]))
        write_runs(self.out / chunk_file(chunk), rows)
        journal = self.journal_dir / chunk_file(chunk)[: -len(".gz")]
        if journal.exists():
            journal.unlink()
        return len(rows)

    def write_instances(self, order: dict[str, int]) -> None:
        rows = sorted(self.instances.values(), key=lambda r: (chunk_of(r["instance"]), order.get(r["instance"], 10**6), r["instance"]))
        _atomic_write(self.out / INSTANCES, _csv_text(INSTANCE_COLUMNS, rows).encode())

    def write_manifest(self, plan: SweepPlan, command: str) -> dict[str, Any]:
        path = self.out / MANIFEST
        old = json.loads(path.read_text()) if path.is_file() else {}
        grids = {**old.get("lr_grid", {}), **plan.grids}
        chunks: dict[str, Any] = {}
        for r in self.instances.values():
            c = chunks.setdefault(f"{chunk_of(r['instance']):02d}", {"instances": [], "runs": 0})
            c["instances"].append(r["instance"])
        for r in filter(plan.on_grid, self.rows.values()):
            c = chunks.setdefault(f"{chunk_of(r['instance']):02d}", {"instances": [], "runs": 0})
            c["runs"] += 1
        for name, c in chunks.items():
            c["file"] = chunk_file(int(name))
            c["complete"] = (self.out / c["file"]).is_file()
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "command": command,
            "versions": _versions(),
            "created": old.get("created", _now()),
            "updated": _now(),
            "optimizers": sorted((set(old.get("optimizers", [])) | set(plan.optimizers)) - set(BASELINES), key=_opt_rank),
            "baselines": {o: list(lrs) for o, lrs in BASELINES.items()
                          if o in plan.optimizers or o in old.get("baselines", {})},
            "seeds": sorted(set(old.get("seeds", [])) | set(plan.seeds)),
            "lr_points": LR_POINTS,
            "lr_step_decades": LR_STEP_DECADES,
            "lr_grid": dict(sorted(grids.items())),
            "schedule_policy": {"default": SCHEDULE, "schedulefree_adamw": SCHEDULE_FREE,
                                "evaluations_per_run": _evals(), "value": "best validation metric over the evaluations"},
            "hyperparameters": {"default": "catalog defaults except lr", **SWEEP_PARAMS},
            "chunks": dict(sorted(chunks.items())),
            "files": {"instances": INSTANCES, "runs": "runs-NN.csv.gz"},
        }
        _atomic_write(path, (json.dumps(manifest, indent=2) + "\n").encode())
        return manifest


def _opt_rank(name: str) -> tuple[int, str]:
    return (OPTIMIZERS.index(name) if name in OPTIMIZERS else len(OPTIMIZERS), name)


def _evals() -> int:
    from autoopt.tasks.zoo.base import EVALS

    return EVALS


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("autoopt", "torch", "optuna", "ray", "scikit-learn", "pytorch-optimizer"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def exit_cleanly_on_sigterm() -> None:
    """Make ``kill PID`` end a build like Ctrl-C: in-flight units cancelled, Ray shut down, journals intact.

    For the CLI's process (a background job ignores SIGINT, so SIGTERM is how it gets stopped).
    """
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)


def build(
    out: str | Path | None = None,
    *,
    families: Sequence[str] | None = None,
    limit: int | None = None,
    optimizers: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    workers: int = 2,
    address: str | None = None,
    command: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    max_units: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) the dense sweep into ``out``; returns a summary.

    Runs on Ray: the cluster at ``address`` / $AUTOOPT_RAY_ADDRESS / $RAY_ADDRESS, else a local
    Ray with ``workers`` CPUs; when the cluster has GPUs each unit takes a quarter GPU.
    ``max_units`` stops after that many units (for tests of resumption).
    """
    import ray

    from autoopt.runner import ensure_ray

    plan = SweepPlan.make(families, limit, optimizers, seeds)
    out = Path(out) if out is not None else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    store = ZooStore(out).load()
    command = command if command is not None else shlex.join(["autoopt", *sys.argv[1:]])
    order = {iid: k for k, iid in enumerate(plan.instances)}
    opt_order = {o: k for k, o in enumerate(OPTIMIZERS)}
    started = time.perf_counter()

    ensure_ray(address, num_cpus=workers)
    gpus = float(ray.cluster_resources().get("GPU", 0))
    opts = {"num_gpus": 0.25, "num_cpus": 1} if gpus else {"num_cpus": 1}
    device = "cuda" if gpus else "cpu"
    remote_unit = ray.remote(max_retries=2)(run_unit).options(**opts)
    remote_describe = ray.remote(max_retries=2)(describe_instance).options(**opts)

    # 1. traits of instances not described yet, or described before a column was added (in parallel)
    missing = [i for i in plan.instances
               if i not in store.instances or any(store.instances[i].get(c) is None for c in INSTANCE_COLUMNS)]
    if missing:
        log(f"measuring traits of {len(missing)} instance(s)")
        for row in ray.get([remote_describe.remote(i) for i in missing]):
            store.instances[row["instance"]] = row
        store.write_instances(order)
    store.write_manifest(plan, command)

    # 2. the units still missing, chunk by chunk
    todo = [(i, o, m) for i, o in plan.units() if (m := store.missing(i, o, plan.points(i, o)))]
    done_runs = plan.total_runs - sum(len(m) for _, _, m in todo)
    pending_by_chunk: dict[int, int] = {}
    for i, _, _ in todo:  # counted before max_units: a chunk is sealed only when it is really complete
        pending_by_chunk[chunk_of(i)] = pending_by_chunk.get(chunk_of(i), 0) + 1
    if max_units is not None:
        todo = todo[:max_units]
    baselines = [o for o in plan.optimizers if o in BASELINES]
    extra = f" + baselines {', '.join(baselines)}" if baselines else ""
    log(f"zoo sweep -> {out}: {len(plan.instances)} instances x {len(plan.optimizers) - len(baselines)} optimizers x "
        f"{LR_POINTS} lrs x {len(plan.seeds)} seeds{extra} = {plan.total_runs} runs; {done_runs} done, "
        f"{plan.total_runs - done_runs} to run on {'GPU' if gpus else 'CPU'} ({ray.cluster_resources().get('CPU', 0):g} CPUs)")
    # chunks that are complete in the journal but not sealed yet (an interrupted seal)
    chunks_in_plan = sorted({chunk_of(i) for i in plan.instances})
    for c in chunks_in_plan:
        if c not in pending_by_chunk and (store.journal_dir / chunk_file(c)[:-3]).exists():
            store.seal_chunk(c, order, opt_order, plan)

    in_flight: dict[Any, tuple[str, str, list[tuple[float, int]]]] = {}
    window = max(2, 2 * int(ray.cluster_resources().get("CPU", workers)))
    queue = list(todo)
    ran = run_seconds = 0.0
    sealed: list[int] = []
    unsealable: set[int] = set()  # chunks with a unit Ray lost in this build
    lost_in_a_row = 0
    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        bar = Progress(TextColumn("[bold]zoo sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
                       TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.description}"))
        bar.start()
        bar_task = bar.add_task("", total=plan.total_runs, completed=done_runs)
    unit_started = last_log = time.perf_counter()
    try:
        while queue or in_flight:
            while queue and len(in_flight) < window:
                iid, opt, points = queue.pop(0)
                in_flight[remote_unit.remote(iid, opt, points, device)] = (iid, opt, points)
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)  # wakes up for signals
            if not ready:
                continue
            iid, opt, points = in_flight.pop(ready[0])
            try:
                rows = ray.get(ready[0])
            except Exception as exc:  # Ray lost the worker (or the node): nothing is recorded, a rerun retries
                log(f"{iid} {opt}: no result ({type(exc).__name__}: {str(exc)[:200]}); rerun the build to retry it")
                unsealable.add(chunk_of(iid))
                lost_in_a_row += 1
                if lost_in_a_row >= MAX_LOST_IN_A_ROW:
                    raise RuntimeError(f"Ray returned no result for {lost_in_a_row} units in a row (last: {exc}); "
                                       f"stopping: what finished is in {out}, rerun to resume") from exc
                continue
            lost_in_a_row = 0
            store.journal(rows)
            ran += len(rows)
            done_runs += len(rows)
            run_seconds += sum(r["seconds"] for r in rows)
            chunk = chunk_of(iid)
            pending_by_chunk[chunk] -= 1
            elapsed = time.perf_counter() - unit_started
            eta = elapsed / ran * (plan.total_runs - done_runs) if ran else 0.0
            if bar is not None:
                bar.update(bar_task, completed=done_runs, description=f"chunk {chunk:02d} {iid} {opt}")
            if pending_by_chunk[chunk] == 0 and chunk not in unsealable:
                n = store.seal_chunk(chunk, order, opt_order, plan)
                store.write_manifest(plan, command)
                sealed.append(chunk)
                log(f"chunk {chunk:02d} complete: {n} runs -> {out / chunk_file(chunk)}; {done_runs}/{plan.total_runs} "
                    f"runs, {run_seconds / max(ran, 1):.2f} s/run, ETA {_duration(eta)}")
            elif time.perf_counter() - last_log >= LOG_EVERY_S:
                log(f"{done_runs}/{plan.total_runs} runs, {run_seconds / ran:.2f} s/run in workers, "
                    f"{elapsed / ran:.2f} s/run wall, ETA {_duration(eta)} (chunk {chunk:02d}, {iid})")
            else:
                continue
            last_log = time.perf_counter()
    finally:
        if bar is not None:
            bar.stop()
        for ref in in_flight:
            ray.cancel(ref, force=True)
    return {
        "out": str(out),
        "instances": len(plan.instances),
        "runs_total": plan.total_runs,
        "runs_done": done_runs,
        "ran": int(ran),
        "sealed_chunks": sealed,
        "seconds": round(time.perf_counter() - started, 1),
        "seconds_per_run": round(run_seconds / ran, 3) if ran else None,
    }
