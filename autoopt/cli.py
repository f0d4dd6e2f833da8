"""autoopt: search the optimizer, its hyperparameters and the LR schedule for your training.

Usage errors (bad spec, unknown task or study, unreachable storage) print one line and exit 2;
a study's failing trials never make the command fail."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from autoopt.core import record as R

#: Options several commands share (typer reads them as metadata; one instance serves every command).
STORAGE_OPTION = typer.Option(None, "--storage", envvar="AUTOOPT_STORAGE", help="Optuna storage URL")
JSON_OPTION = typer.Option(False, "--json", help="print JSON")
JOBS_OPTION = typer.Option(None, "--jobs-address", envvar="AUTOOPT_JOBS_ADDRESS",
                           help="Ray job API (the dashboard, http://host:8265) for studies run with --submit")

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.callback()
def _quiet() -> None:
    """Keep library INFO chatter (new study created, ...) off the user's terminal."""
    import logging

    logging.getLogger("optuna").setLevel(logging.WARNING)
# No markup: what these print is study names, paths, users' exception texts and configurations,
# where rich would read "[batch, 10]" as a style tag and drop it, and "[/x]" as a closing tag and
# raise (MarkupError) instead of printing the error it was asked to.
out = Console(markup=False)
err = Console(stderr=True, markup=False)


class UsageError(Exception):
    """Raised for bad input; the CLI prints it and exits 2."""


def _fail(message: str) -> None:
    err.print(Text.assemble(("error:", "red"), f" {message}"), highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _guard(fn):  # noqa: ANN001 - small decorator turning known errors into exit 2
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from autoopt.spec import SpecError
        from autoopt.storage import StorageError
        from autoopt.trust import UntrustedImport

        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            # TaskNotFound comes from autoopt.task, which imports torch: only a command that
            # loaded it can raise it, and `status`/`list` stay quick
            task = sys.modules.get("autoopt.task")
            trial = sys.modules.get("autoopt.trial")
            jobs = sys.modules.get("autoopt.jobs")
            known = (SpecError, StorageError, UsageError, UntrustedImport, *((task.TaskNotFound,) if task else ()),
                     *((trial.ObjectiveError,) if trial else ()), *((jobs.JobError,) if jobs else ()))
            if not isinstance(exc, known):
                raise
            _fail(str(exc).splitlines()[0] if isinstance(exc, StorageError) else str(exc))

    return wrapper


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _progress_table(name: str, p: Any) -> Table:
    c = p.counts
    counted = sum(c.get(k, 0) for k in ("complete", "pruned", "failed"))
    eta = p.eta(counted + p.running)
    t = Table(title=f"study {name}", show_header=True, header_style="bold")
    for col in ("complete", "pruned", "failed", "running", "best", "elapsed", "ETA"):
        t.add_column(col, justify="right")
    t.add_row(
        str(c.get("complete", 0)),
        str(c.get("pruned", 0)),
        str(c.get("failed", 0)),
        str(p.running),
        _fmt(p.best_value),
        f"{p.elapsed:.0f}s",
        "-" if eta is None else f"{eta:.0f}s",
    )
    if p.best_config:
        cfg = p.best_config
        opt = ", ".join(f"{k}={_fmt(v)}" for k, v in cfg.get("optimizer_params", {}).items())
        t.caption = f"best: {cfg['optimizer']}({opt}) + {cfg['scheduler']}, warmup {_fmt(cfg.get('warmup_fraction'))}"
    return t


def _claim_stdout() -> Any:
    """For ``--json``: the real stdout, kept for the JSON alone. From here on file descriptor 1
    is stderr, so whatever else the process prints (Ray's "(raylet) A worker died ..." lines,
    MLflow's messages, native logs), now or from a background thread at exit, goes to stderr
    and ``autoopt run --json | jq`` always reads one JSON document."""
    try:
        if sys.stdout.fileno() != 1:
            return sys.stdout
    except (AttributeError, OSError, ValueError):  # an in-memory stdout (tests' CliRunner)
        return sys.stdout
    sys.stdout.flush()
    json_fd = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(json_fd, "w", encoding="utf-8")


def _run_spec(spec: Any, as_json: bool) -> None:
    from autoopt.runner import StudyRunner
    from autoopt.study import recommender_hooks, summarize

    json_out = _claim_stdout() if as_json else None
    console = err if as_json else out
    # this process ends after the study: its report is drawn here, not in one more process
    runner = StudyRunner(spec, hooks=recommender_hooks(), report_here=True)
    live = Live(_progress_table(spec.name, runner.progress), console=console, refresh_per_second=4, transient=False)
    last = [0.0]

    def on_progress(p: Any) -> None:
        if time.time() - last[0] > 0.25 or p.done:
            live.update(_progress_table(spec.name, p))
            last[0] = time.time()

    runner.on_progress = on_progress
    try:
        try:
            with live:
                runner.run()
        finally:
            if not console.is_terminal:  # Rich ends the table with a newline on a terminal only
                console.line()
    except KeyboardInterrupt:
        _say_interrupted(spec.name, runner.interrupt)
        raise typer.Exit(130) from None
    if runner.nothing_ran:
        err.print(f"note: {runner.nothing_ran}", highlight=False, soft_wrap=True)
    result = summarize(spec.name, runner.storage_url, runner.progress.elapsed, runner.final_summary)
    learning = _what_the_recommender_learns(spec.name)
    if json_out is not None:
        json_out.write(json.dumps({**result.to_dict(), "meta_dataset": learning}, default=str) + "\n")
        json_out.flush()
    else:
        _print_best(result)
        if learning["added"] and not learning["learned"]:
            from autoopt.recommend.cli import FIT_SECONDS

            out.print(f"recommender: the study's runs are in your meta-dataset ({learning['path']}); "
                      f"`autoopt meta fit` learns from them (about {FIT_SECONDS} s on 2 cores)",
                      highlight=False, soft_wrap=True)


def _what_the_recommender_learns(name: str) -> dict[str, Any]:
    """Whether the finished study's runs reached the user's meta-dataset (``added``: a study whose
    runs all failed adds nothing a fit could learn) and whether the recommender's model has
    learned from them yet (``learned``: only after ``autoopt meta fit``)."""
    from autoopt.recommend.meta import default_studies_path, studies_not_learned
    from autoopt.recommend.recommender import Recommender

    path = default_studies_path()
    try:
        model = Recommender.default().model
    except Exception as exc:  # noqa: BLE001 - an unreadable user model: the study is done all the same
        return {"path": str(path), "added": None, "learned": None, "error": f"{type(exc).__name__}: {exc}"[:300]}
    learned = list(model.instances) if model is not None else []
    waiting = name in studies_not_learned(learned, path)
    return {"path": str(path), "added": waiting or name in learned, "learned": name in learned}


def _say_interrupted(name: str, what: dict[str, Any] | None) -> None:
    """Ctrl-C: what was stopped, what is kept, and how to go on (on stderr, so ``--json`` stays clean)."""
    if what is None:
        err.print(f"interrupted: study {name} stopped before any trial ran. Continue with: autoopt resume {name}",
                  highlight=False, soft_wrap=True)
        return
    c = what["counts"]
    stopped = what["interrupted_trials"]
    mlflow = " Its MLflow runs are ended as KILLED." if what.get("mlflow_parent_run_id") else ""
    err.print(
        f"interrupted: study {name} stopped by the user. {len(stopped)} running trial(s) "
        f"{stopped if stopped else ''} recorded as failed (interrupted) and queued to run again; "
        f"{c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned trial(s) kept.{mlflow}\n"
        f"Continue with: autoopt resume {name}", highlight=False, soft_wrap=True)


def _print_failures(result: Any) -> None:
    """Why trials failed, a line per kind with one trial's reason, so nobody has to open MLflow to learn it."""
    for kind, f in result.failures.items():
        shown = ", ".join(map(str, f["trials"][:5])) + (", ..." if len(f["trials"]) > 5 else "")
        example = f["example"].split(":", 1)[1].strip() if f["example"].startswith(f"{kind}:") else f["example"]
        said = f", e.g. {example}" if example != kind else ""
        out.print(f"  {f['count']} failed: {kind} (trial{'s' if f['count'] > 1 else ''} {shown}){said}", highlight=False)


def _print_best(result: Any) -> None:
    from autoopt.redaction import redact

    out.print(f"storage: {result.to_dict()['storage_url']}")
    if result.mlflow_parent_run_id:
        out.print(f"MLflow: {redact(result.tracking_uri)}  parent run {result.mlflow_parent_run_id}  (autoopt ui)")
    c = result.counts
    out.print(f"trials: {c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed; "
              f"epochs trained {result.epochs_run} of {result.epochs_budget} without pruning")
    _print_failures(result)
    if result.best_config is None:
        out.print("no completed trial yet")
        return
    cfg = result.best_config
    source = ""
    if result.best_trial is not None:  # say where the best came from: the recommender, or the search
        source = f", trial {result.best_trial}" + (", the recommender's suggestion" if result.best_from_warm_start else "")
    out.print(f"best {result.metric} = {_fmt(result.best_value)} ({result.direction}{source})")
    out.print(f"  optimizer: {cfg['optimizer']} {json.dumps(cfg['optimizer_params'], default=str)}")
    out.print(f"  scheduler: {cfg['scheduler']} {json.dumps(cfg['scheduler_params'], default=str)}, "
              f"warmup {_fmt(cfg['warmup_fraction'])}, grad_clip {_fmt(cfg['grad_clip'])}, batch {_fmt(cfg['batch_size'])}")


def _overrides(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


@app.command()
@_guard
def run(
    spec_file: Path = typer.Argument(..., help="study spec (YAML), e.g. studies/quickstart.yaml"),
    trials: Optional[int] = typer.Option(None, "--trials", min=1, help="trial budget (total for the study)"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="trials in parallel"),
    gpus_per_trial: Optional[str] = typer.Option(None, "--gpus-per-trial", help="GPUs per trial (fractions pack trials) or auto: a GPU share where the cluster has GPUs, else CPU"),
    cpus_per_trial: Optional[float] = typer.Option(None, "--cpus-per-trial", min=0.01),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=1.0, help="wall-time budget in seconds"),
    storage: Optional[str] = typer.Option(None, "--storage", envvar="AUTOOPT_STORAGE", help="Optuna storage URL"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", envvar="AUTOOPT_TRACKING_URI", help="MLflow tracking URI"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", envvar="AUTOOPT_RAY_ADDRESS", help="Ray cluster address"),
    name: Optional[str] = typer.Option(None, "--name", help="study name (default: the spec's)"),
    warm_start: Optional[bool] = typer.Option(None, "--warm-start/--no-warm-start",
                                              help="start from the recommender's suggestions "
                                                   "(default: on for a task's study, off for an objective)"),
    as_json: bool = typer.Option(False, "--json", help="print a machine-readable summary"),
    submit: bool = typer.Option(False, "--submit", help="run the study as a Ray job on the cluster (ships this "
                                "directory, returns the job id at once)"),
    jobs_address: Optional[str] = JOBS_OPTION,
) -> None:
    """Run (or continue) the study a spec file describes."""
    from autoopt.spec import StudySpec

    spec = StudySpec.from_yaml(spec_file)
    data = spec.flat()
    data.update(_overrides(n_trials=trials, workers=workers, gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial,
                           timeout_s=timeout, storage=storage, tracking_uri=tracking_uri, ray_address=ray_address, name=name))
    if warm_start is not None:
        data["warm_start"] = {**data["warm_start"], "enabled": warm_start}
    spec = StudySpec.from_dict(data, source=str(spec_file))
    if not submit:
        _run_spec(spec, as_json)
        return
    from autoopt import jobs

    # the driver on the cluster reads the same file with the same flags (storage and tracking go as env)
    flags = {"--trials": trials, "--workers": workers, "--gpus-per-trial": gpus_per_trial,
             "--cpus-per-trial": cpus_per_trial, "--timeout": timeout, "--name": name}
    run_args = [str(a) for flag, value in flags.items() if value is not None for a in (flag, value)]
    if warm_start is not None:
        run_args.append("--warm-start" if warm_start else "--no-warm-start")
    if tracking_uri:
        os.environ["AUTOOPT_TRACKING_URI"] = tracking_uri
    job_id = jobs.submit(spec_file, spec, run_args, address=jobs_address)
    if as_json:
        print(json.dumps({"study_name": spec.name, "job_id": job_id, "jobs_address": jobs.jobs_address(jobs_address)}))
    else:
        out.print(f"submitted study {spec.name} as Ray job {job_id}; follow it with `autoopt status {spec.name}` "
                  f"and `autoopt logs {spec.name}`")


def _load_study(name: str, storage: str | None) -> Any:
    """A stored study, for a command that only reads or continues it: a storage that does not
    exist yet is an error, never created (an empty SQLite file left behind would hide the typo)."""
    import optuna

    from autoopt.storage import StorageMissing, default_storage_url, open_storage

    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage or default_storage_url(), create=False))
    except KeyError:
        raise UsageError(f"no study named {name!r} in this storage") from None
    except StorageMissing as exc:
        raise UsageError(f"no study named {name!r}: {exc}") from None


def _load_spec_of(name: str, storage: str | None, trusted: list[str] | None = None) -> Any:
    """The spec stored with a study, made runnable here: its task path must be trusted (importing
    it runs code someone with write access to the storage chose), and its URLs, stored without
    their passwords, are completed from this user's own settings."""
    from autoopt.redaction import is_redacted, restore
    from autoopt.spec import StudySpec
    from autoopt.storage import default_storage_url
    from autoopt.trust import check_trusted

    url = storage or default_storage_url()
    study = _load_study(name, url)
    data = study.user_attrs.get(R.SPEC)
    if not isinstance(data, dict) or not data:
        raise UsageError(f"study {name!r} was not created by autoopt (no spec stored)")
    if data.get("objective") is not None:  # an objective study: its import path is the code to trust
        check_trusted(data["objective"], f"the spec stored with study {name!r}", trusted or (), what="objective")
    else:
        check_trusted(data.get("task"), f"the spec stored with study {name!r}", trusted or ())
    data = {**data, "storage": url}
    for key, envs in (("tracking_uri", ("AUTOOPT_TRACKING_URI", "MLFLOW_TRACKING_URI")),
                      ("ray_address", ("AUTOOPT_RAY_ADDRESS", "RAY_ADDRESS"))):
        value = restore(data.get(key), [os.environ.get(e) for e in envs])
        if is_redacted(value):
            raise UsageError(f"the stored {key} of study {name!r} is {value} (its password is never stored): "
                             f"set {envs[0]} to the full URL")
        data[key] = value
    return StudySpec.from_dict(data, source=f"stored spec of {name}")


_TRUST_HELP = ("trust a task or objective import path read back from storage (pkg.module:Name, pkg.module or "
               "pkg.*; repeatable)")


@app.command()
@_guard
def resume(
    name: str,
    trials: Optional[int] = typer.Option(None, "--trials", min=1, help="new total trial budget"),
    storage: Optional[str] = STORAGE_OPTION,
    trust_task: Optional[list[str]] = typer.Option(None, "--trust-task", help=_TRUST_HELP),
    as_json: bool = JSON_OPTION,
) -> None:
    """Continue a study from its stored spec (after a stop, a crash or to add trials)."""
    spec = _load_spec_of(name, storage, trust_task)
    if trials:
        spec = spec.replace(n_trials=trials)
    _run_spec(spec, as_json)


def _summary(name: str, storage: str | None) -> Any:
    from autoopt.core.record import summarize as read_summary
    from autoopt.study import summarize

    return summarize(name, storage, summary=read_summary(_load_study(name, storage)))


@app.command()
@_guard
def status(
    name: str,
    storage: Optional[str] = STORAGE_OPTION,
    as_json: bool = JSON_OPTION,
    jobs_address: Optional[str] = JOBS_OPTION,
) -> None:
    """Counts by state and the best value so far (and its Ray job's state, for a submitted study)."""
    job = None
    if jobs_address:
        from autoopt import jobs

        found = jobs.latest_job(name, jobs_address)
        job = jobs.describe(found) if found is not None else None
    try:
        r = _summary(name, storage)
    except UsageError:
        if job is None:
            raise
        r = None  # submitted, and its driver has not created the study yet
    if as_json:
        data = {k: v for k, v in r.to_dict().items() if k != "best_config"} if r is not None else {"study_name": name}
        if job is not None:
            data["job"] = job
        print(json.dumps(data, default=str))
        return
    if job is not None:
        out.print(f"{name}: Ray job {job['job_id']} {job['status']}" + (f" ({job['message']})" if job["message"] else ""))
    if r is None:
        out.print(f"{name}: no trial stored yet")
        return
    c = r.counts
    out.print(f"{name}: {c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed, "
              f"{c['running']} running, {c['waiting']} waiting; best {r.metric} {_fmt(r.best_value)}")
    _print_failures(r)


@app.command()
@_guard
def logs(name: str, jobs_address: Optional[str] = JOBS_OPTION) -> None:
    """The driver's output of a study submitted with run --submit."""
    from autoopt import jobs

    sys.stdout.write(jobs.logs(name, jobs_address))


@app.command()
@_guard
def stop(name: str, jobs_address: Optional[str] = JOBS_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Stop a submitted study's Ray job (autoopt resume NAME continues it)."""
    from autoopt import jobs

    job_id, stopped = jobs.stop(name, jobs_address)
    if as_json:
        print(json.dumps({"study_name": name, "job_id": job_id, "stopped": stopped}))
    else:
        out.print(f"{name}: Ray job {job_id} " + ("stopping" if stopped else "was not running"))


@app.command()
@_guard
def best(
    name: str,
    storage: Optional[str] = STORAGE_OPTION,
    as_json: bool = JSON_OPTION,
    fmt: Optional[str] = typer.Option(None, "--format", help="print it as code: torch, lightning or hf"),
) -> None:
    """The best configuration, ready to paste (--format: as code for your loop, Lightning or Hugging Face)."""
    from autoopt.export import FORMATS

    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: allowed: {', '.join(FORMATS)}")
    r = _summary(name, storage)
    if fmt is not None:
        if r.best_config is None:
            raise UsageError(f"study {name!r} has no completed trial yet")
        from autoopt.export import best_config_code

        best = R.best_trial(r.study)
        number = best.number if best is not None else None
        sys.stdout.write(best_config_code(r.best_config, fmt, study_name=name, metric=r.metric, value=r.best_value,
                                          trial_number=number))
        return
    if as_json:
        print(json.dumps({"study_name": name, "best_value": r.best_value, "metric": r.metric,
                          "best_config": r.best_config, "best_params": r.best_params}, default=str))
        return
    _print_best(r)


@app.command("list")
@_guard
def list_studies(
    storage: Optional[str] = STORAGE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Studies in the storage."""
    import optuna

    from autoopt.storage import StorageMissing, default_storage_url, open_storage

    try:  # no storage file yet: no studies (and none is created by looking)
        summaries = optuna.get_all_study_summaries(open_storage(storage or default_storage_url(), create=False),
                                                   include_best_trial=True)
    except StorageMissing:
        summaries = []
    rows = [
        {"name": s.study_name, "trials": s.n_trials, "best_value": s.best_trial.value if s.best_trial else None,
         "task": s.user_attrs.get(R.TASK), "metric": s.user_attrs.get(R.METRIC)}
        for s in summaries
    ]
    if as_json:
        print(json.dumps(rows, default=str))
        return
    t = Table("name", "task", "trials", "metric", "best")
    for r in rows:
        t.add_row(r["name"], _fmt(r["task"]), str(r["trials"]), _fmt(r["metric"]), _fmt(r["best_value"]))
    out.print(t)


@app.command()
@_guard
def optimizers(as_json: bool = JSON_OPTION) -> None:
    """The optimizer catalog: hyperparameters, ranges, defaults, memory and source."""
    from autoopt.core.catalog import catalog_table

    rows = catalog_table()
    if as_json:
        print(json.dumps(rows, default=str))
        return
    t = Table("name", "family", "hyperparameters (range, default)", "state/param", "source", "guidance")
    for r in rows:
        hps = []
        for h in r["hyperparams"]:
            if h.get("choices") is not None:
                hps.append(f"{h['name']} {list(h['choices'])} ={h['default']}")
            else:
                hps.append(f"{h['name']} [{_fmt(h['low'])}, {_fmt(h['high'])}]{' log' if h.get('log') else ''} ={_fmt(h['default'])}")
        name = r["name"] + ("" if r.get("mini_batch", True) else " (full-batch)")
        t.add_row(name, r["family"], "\n".join(hps), _fmt(r["state_per_param"]), r["source"], r.get("guidance", ""))
    out.print(t)


@app.command()
@_guard
def tasks(as_json: bool = JSON_OPTION) -> None:
    """Reference tasks and their traits (sparsity measured from real gradients)."""
    from autoopt.task import REFERENCE_TASKS, load_task

    rows = [{"task": key, **load_task(key).describe()} for key in REFERENCE_TASKS]
    if as_json:
        print(json.dumps(rows, default=str))
        return
    t = Table("task", "domain", "metric", "batch", "grad sparsity", "params", "train size", "epochs")
    for r in rows:
        t.add_row(f"{r['task']} ({r['name']})", r["domain"], f"{r['metric']} ({r['direction'][:3]})", str(r["batch_size"]),
                  f"{r['grad_sparsity']:.2f}", str(r["n_params"]), str(r["dataset_size"]), str(r["epochs"]))
    out.print(t)


@app.command()
@_guard
def report(
    name: str,
    out_dir: Path = typer.Option(Path("reports"), "--out", help="folder for the HTML and PNG plots"),
    storage: Optional[str] = STORAGE_OPTION,
    log: bool = typer.Option(True, "--log/--no-log", help="also log the plots to the study's MLflow parent run"),
) -> None:
    """Regenerate a study's plots (HTML + PNG) and log them to MLflow."""
    from autoopt import report as report_mod

    study = _load_study(name, storage)
    try:
        folder = report_mod.report_folder(out_dir, study.study_name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    paths = report_mod.write_report(study, folder)
    if log:
        from autoopt import tracking

        tracking.log_report(study, paths)
    for p in paths:
        out.print(str(p))


@app.command()
@_guard
def sync(
    name: str,
    storage: Optional[str] = STORAGE_OPTION,
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow store (default: the study's)"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Log to MLflow what an outage kept out of it (runs, curves, states, best config), from the storage."""
    from autoopt.sync import sync_study

    study = _load_study(name, storage)
    report = sync_study(study, tracking_uri)
    if as_json:
        print(json.dumps(report, default=str))
    elif report["reachable"]:
        out.print(f"{name}: {report['created']} trial run(s) created, {report['completed']} completed, "
                  f"{report['unchanged']} already complete; parent run {report['parent_run_id']} ({report['tracking_uri']})")
    if not report["reachable"]:
        _fail(f"MLflow at {report['tracking_uri']} did not answer; nothing is lost (the study is in the storage): "
              "run `autoopt sync` again once it is up")


@app.command()
def ui(
    port: int = typer.Option(5000, "--port"),
    host: str = typer.Option("127.0.0.1", "--host"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", envvar="AUTOOPT_TRACKING_URI"),
) -> None:
    """Start the MLflow UI on the study store (Ctrl-C to stop)."""
    from autoopt import tracking
    from autoopt.redaction import redact, redact_text
    from autoopt.ui import start_ui, stop_ui, store_uri_problem

    import signal

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # the server runs in its own process group: a SIGTERM/SIGHUP to this command stops it too,
    # from the moment it is started (start_ui stops it when interrupted while waiting for it)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    problem = store_uri_problem(uri)
    if problem:
        _fail(problem)
    try:
        proc = start_ui(uri, host=host, port=port)
    except ValueError as exc:  # an http(s) tracking server already is the UI
        out.print(str(exc))
        raise typer.Exit(0)
    except (FileNotFoundError, RuntimeError) as exc:  # no store there yet; the server did not start
        _fail(redact_text(str(exc).strip()))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    try:
        out.print(f"MLflow UI on http://{host}:{port} (store {redact(uri)}); Ctrl-C to stop")
        code = proc.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        stop_ui(proc)
    raise typer.Exit(code)


def _register_optional() -> None:
    """The recommender's commands live in their own module."""
    try:
        from autoopt.recommend.cli import meta_app, recommend_command
    except ImportError:
        return
    app.command("recommend")(recommend_command)
    app.add_typer(meta_app, name="meta", help="Build, fit and evaluate the recommender's meta-dataset and model.")


_register_optional()


def main() -> None:
    """The ``autoopt`` console script. When the command is done the process only has to exit:
    freezing the heap skips the interpreter's final full garbage collection over everything torch,
    Ray and MLflow allocated (about 3 s of a 40 s quickstart on 2 cores)."""
    import gc

    try:
        app()
    finally:
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
