"""Command line: ``autoopt recommend`` and ``autoopt meta build|fit|evaluate``.

``recommend_command`` and ``meta_app`` are registered by autoopt/cli.py; ``python -m
autoopt.recommend.cli`` runs them standalone. ``recommend`` imports neither torch nor
scikit-learn (unless ``--from-task`` asks to measure a task), so it answers in well under 2 s.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from autoopt.core.traits import DOMAINS, FLAGS, GOALS, TaskTraits, TraitError, human_bytes, human_count, parse_count

# ============================================================================ recommend


def _bad(field: str, message: str) -> typer.BadParameter:
    hint = {
        "domain": "--task/--domain",
        "batch_size": "--batch",
        "grad_sparsity": "--sparsity",
        "n_params": "--params",
        "dataset_size": "--dataset-size",
        "goal": "--goal",
        "flags": "--flag",
    }.get(field, f"--{field.replace('_', '-')}")
    return typer.BadParameter(message, param_hint=hint)


def recommend_command(
    task: Optional[str] = typer.Option(
        None, "--task", "--domain", "-t", help=f"what the model does: {', '.join(DOMAINS)}", show_default=False
    ),
    batch: Optional[int] = typer.Option(None, "--batch", "-b", help="batch size", show_default=False),
    sparsity: Optional[float] = typer.Option(
        None, "--sparsity", help="fraction of zero gradient entries (0..1)", show_default=False
    ),
    sparse: bool = typer.Option(False, "--sparse", help="the model has sparse gradients (nn.Embedding(sparse=True))"),
    params: Optional[str] = typer.Option(None, "--params", help="model size, e.g. 350k, 25M, 1.3B", show_default=False),
    dataset_size: Optional[str] = typer.Option(
        None, "--dataset-size", help="training examples, e.g. 60k", show_default=False
    ),
    memory_limited: bool = typer.Option(False, "--memory-limited", help="optimizer memory is the constraint"),
    goal: Optional[str] = typer.Option(
        None, "--goal", help=f"{', '.join(GOALS)} (fast = fast convergence)", show_default=False
    ),
    flag: Optional[list[str]] = typer.Option(
        None, "--flag", help=f"a situation (repeatable): {', '.join(FLAGS)}", show_default=False
    ),
    from_task: Optional[str] = typer.Option(
        None, "--from-task", help="measure the traits of a task: reference name (cv, nlp, ...) or 'pkg.module:Name'"
    ),
    top: int = typer.Option(5, "--top", "-k", min=1, help="how many optimizers to show"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    model: Optional[Path] = typer.Option(None, "--model", help="a fitted model (.npz) instead of the default"),
) -> None:
    """Rank optimizers for a workload, with hyperparameters, memory cost and the reasons."""
    from autoopt.recommend.recommender import Recommender

    try:
        n_params = parse_count(params, "n_params") if params is not None else None
        n_data = parse_count(dataset_size, "dataset_size") if dataset_size is not None else None
        overrides: dict[str, Any] = {
            "domain": task,
            "batch_size": batch,
            "grad_sparsity": sparsity,
            "sparse_gradients": sparse or None,
            "n_params": n_params,
            "dataset_size": n_data,
            "memory_limited": memory_limited or None,
            "goal": goal,
            "flags": frozenset(flag) if flag else None,
        }
        base = _measured_traits(from_task) if from_task else None
        if base is None and task is None:
            raise TraitError("domain", f"is required (or --from-task); one of {', '.join(DOMAINS)}")
        traits = TaskTraits.from_any(base, **overrides)
    except TraitError as exc:
        raise _bad(exc.field, str(exc).split(": ", 1)[-1]) from None
    if model is not None and not model.is_file():
        raise typer.BadParameter(f"{model} not found", param_hint="--model")
    from autoopt.recommend.recommender import ModelFileError

    try:
        recommender = Recommender.default(model)
    except ModelFileError as exc:
        raise typer.BadParameter(str(exc), param_hint="--model") from None
    answer = recommender.rank(traits, top=top)
    _note_studies_not_learned(answer, recommender)
    if as_json:
        typer.echo(json.dumps(answer.to_dict(), indent=2, default=str))
    else:
        render(answer)


#: How long ``meta fit`` takes on the shipped zoo and a few studies (2 CPU cores, 2026-12-07: 41 s).
FIT_SECONDS = 40


def _note_studies_not_learned(answer: Any, recommender: Any) -> None:
    """Say which of the user's finished studies the model has not learned from yet: studies feed
    the meta-dataset when they end, and the model learns from them only at the next ``meta fit``."""
    from autoopt.recommend.meta import default_studies_path, studies_not_learned

    if recommender.model is None:
        return
    missing = studies_not_learned(recommender.model.instances)
    answer.model["studies_not_learned"] = missing
    if not missing:
        return
    names = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    n = len(missing)
    answer.notes.append({
        "text": (f"{n} finished {'study' if n == 1 else 'studies'} of yours ({names}) "
                 f"{'is' if n == 1 else 'are'} not in this model yet: `autoopt meta fit` (about {FIT_SECONDS} s "
                 f"on 2 cores) learns from {'it' if n == 1 else 'them'}, and `recommend` uses the refitted model."),
        "rule": "studies-not-learned",
        "sources": [str(default_studies_path())],
    })


def _measured_traits(ref: str) -> TaskTraits:
    from autoopt.task import TaskNotFound, load_task

    try:
        return load_task(ref).traits()
    except TaskNotFound as exc:
        raise typer.BadParameter(str(exc), param_hint="--from-task") from None


def render(answer: Any, console: Any = None) -> None:
    """The answer as a table, then each optimizer's reasons and the practical notes."""
    from rich import box
    from rich.console import Console
    from rich.markup import escape as e  # rule texts, sources (paths) and study names are not markup
    from rich.table import Table

    from autoopt.recommend.recommender import OVERRIDE_DEPTH, REGRET_SCALE

    console = console or Console(width=None if sys.stdout.isatty() else 130)
    t = answer.traits
    desc = [f"task {t.domain}"]
    for label, value in (
        ("batch", t.batch_size),
        ("sparsity", t.grad_sparsity),
        ("params", human_count(t.n_params) if t.n_params else None),
        ("data", human_count(t.dataset_size) if t.dataset_size else None),
        ("grad RMS", f"{t.grad_rms:.3g}" if t.grad_rms else None),
        ("goal", t.goal),
    ):
        if value is not None:
            desc.append(f"{label} {value}")
    if t.sparse_gradients:
        desc.append("sparse gradients")
    if t.memory_limited:
        desc.append("memory-limited")
    if t.flags:
        desc.append("flags " + ",".join(sorted(t.flags)))
    m = answer.model
    evidence = (f"learned model on {m['tasks']} zoo tasks of {m['families']} families" if m["fitted"]
                else "no learned model (rules only)")
    kept = sum(1 for r in answer.recommendations if any(x["rule"] == "guidance-kept" for x in r.reasons))
    order = ("portfolio order (each pick most lowers the expected best-of)" if not kept else
             f"the guidance kept {kept} of the top {min(OVERRIDE_DEPTH, len(answer.recommendations))} "
             "(see the notes), the rest in portfolio order")
    table = Table(
        title=f"Optimizers for {', '.join(desc)}",
        caption=f"rule prior + {evidence}; {order}; regret {REGRET_SCALE}",
        box=box.SIMPLE_HEAD, pad_edge=False,
    )
    for col, kw in (
        ("#", {"justify": "right"}),
        ("optimizer", {"style": "bold", "no_wrap": True}),
        ("score", {"justify": "right", "no_wrap": True}),
        ("regret", {"justify": "right", "no_wrap": True}),
        ("lr [range]", {}),
        ("betas / mom.", {}),
        ("wd", {"justify": "right"}),
        ("warmup", {"justify": "right"}),
        ("schedule", {}),
        ("state", {"justify": "right"}),
        ("studies", {"justify": "right"}),
    ):
        table.add_column(col, **kw)
    for r in answer:
        h = r.hyperparameters
        if "momentum" in h:
            mom = f"{h['momentum']:g}"
        elif "beta1" in h:
            mom = f"{h['beta1']:g}, {h['beta2']:g}" if "beta2" in h else f"{h['beta1']:g}"
        else:
            mom = "-"
        clip = f" clip {h['grad_clip']:g}" if h.get("grad_clip") else ""
        mem = r.memory
        state = f"{mem['state_per_param']:g}x" if mem["state_per_param"] is not None else "?"
        if mem["bytes"] is not None:
            state += f" {human_bytes(mem['bytes'])}"
        table.add_row(
            str(r.rank),
            r.optimizer,
            f"{r.score:.2f}±{r.score_std:.2f}",
            f"{r.predicted_regret:.2f}" if r.predicted_regret is not None else "-",
            f"{h['lr']:.2g} [{h['lr_range'][0]:.1g}, {h['lr_range'][1]:.1g}]",
            mom,
            f"{h['weight_decay']:.2g}" if isinstance(h.get("weight_decay"), (int, float)) else "-",
            f"{h.get('warmup_fraction', 0):.0%}",
            h["scheduler"] + clip,
            state,
            str(r.evidence.get("similar_studies", 0)),
        )
    console.print(table)
    for r in answer:
        console.print(f"[bold]{r.rank}. {r.optimizer}[/bold]  prior {r.prior_score:.2f}"
                      + (f", learned {r.learned_score:.2f} (weight {r.learned_weight:.2f})" if r.learned_score is not None else ""))
        for x in r.reasons:
            mapped = f" [dim]({e(str(x['mapped']))})[/dim]" if x.get("mapped") else ""
            console.print(f"   {x['weight']:+.2f} {e(x['rule'])}: {e(x['text'])} [dim]{e(_cited(x['sources']))}[/dim]{mapped}",
                          highlight=False)
        ev = r.evidence
        if ev.get("similar_studies"):
            ex = ev.get("example") or {}
            console.print(
                f"   evidence: {ev['similar_studies']} similar zoo tasks (n_near {ev['n_near']}), best in {ev.get('best_in', 0)}, "
                f"median tuned regret {ev.get('median_tuned_regret')}; e.g. {e(str(ex.get('study')))}: "
                f"best lr {_fmt(ex.get('best_lr'))}, regret {_fmt(ex.get('tuned_regret'))}",
                highlight=False,
            )
        else:
            console.print("   evidence: no similar zoo tasks; the rules decide", style="dim")
    warm = answer.warm_start(3)
    if warm:
        console.print("[bold]Try first[/bold] (what `warm_start` enqueues; the lr is the least certain part, so half "
                      "a decade either side): " + ", ".join(f"{c['optimizer']} lr {_fmt(c['optimizer_params'].get('lr'))}"
                                                             for c in warm), highlight=False)
    if answer.notes:
        console.print("[bold]Notes[/bold]")
        for n in answer.notes:
            console.print(f" - {e(n['text'])} [dim]{e(_cited(n['sources']))}[/dim]", highlight=False)
    if answer.excluded:
        console.print("[dim]Not applicable: " + e("; ".join(f"{k} ({v})" for k, v in answer.excluded.items())) + "[/dim]",
                      highlight=False)


def _cited(sources: Any) -> str:
    return f"[{'; '.join(str(s) for s in sources)}]"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else str(v)


# ============================================================================ meta
meta_app = typer.Typer(help="Build, fit and evaluate the recommender's meta-dataset and model.", no_args_is_help=True)


@meta_app.command("build")
def meta_build(
    out: Optional[Path] = typer.Option(None, "--out", help="zoo meta-dataset folder (default: the shipped one)"),
    zoo: bool = typer.Option(True, "--zoo", help="the task zoo's dense lr sweep (the meta-dataset's only source)"),
    families: Optional[list[str]] = typer.Option(None, "--families", help="zoo families (repeatable or comma-separated; default all)"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="zoo: at most N instances per family"),
    optimizers: Optional[str] = typer.Option(None, "--optimizers", help="zoo: comma-separated subset of the sweep's optimizers and baselines (prodigy)"),
    run_seeds: Optional[str] = typer.Option(None, "--run-seeds", help="zoo: comma-separated training seeds (default 0,1)"),
    workers: int = typer.Option(2, "--workers", min=1),
) -> None:
    """Run the task zoo's dense lr sweep (resumable, in chunks) into the meta-dataset folder."""
    _zoo_build(out, families, limit, optimizers, run_seeds, workers)


def _zoo_build(out: Optional[Path], families: Optional[list[str]], limit: Optional[int], optimizers: Optional[str],
               run_seeds: Optional[str], workers: int) -> None:
    """``meta build --zoo``: parse the options, then :func:`autoopt.recommend.sweep.build`."""
    from autoopt.recommend import sweep

    fams = [f.strip() for item in families or [] for f in item.split(",") if f.strip()]
    opts = [o.strip() for o in optimizers.split(",") if o.strip()] if optimizers else None
    try:
        seeds = [int(x) for x in run_seeds.split(",") if x.strip()] if run_seeds else None
        plan_check = sweep.SweepPlan.make(fams or None, limit, opts, seeds)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--families/--optimizers/--run-seeds") from None
    if not plan_check.instances:
        raise typer.BadParameter("no zoo instance selected", param_hint="--families/--limit")
    sweep.exit_cleanly_on_sigterm()
    summary = sweep.build(out, families=fams or None, limit=limit, optimizers=opts, seeds=seeds, workers=workers,
                          log=typer.echo)
    typer.echo(f"{summary['runs_done']}/{summary['runs_total']} runs in {summary['out']} "
               f"({summary['ran']} run now, {summary['seconds']}s)")


def _data_options(data: Optional[Path], studies: Optional[list[Path]]) -> tuple[Optional[Path], Optional[list[Path]]]:
    if data is not None and not (data / "MANIFEST.json").is_file():
        raise typer.BadParameter(f"{data} is not a zoo meta-dataset folder (no MANIFEST.json)", param_hint="--data")
    for p in studies or []:
        if not p.is_file():
            raise typer.BadParameter(f"{p} not found", param_hint="--studies")
    return data, studies


@meta_app.command("fit")
def meta_fit(
    zoo: bool = typer.Option(True, "--zoo", help="fit on the zoo meta-dataset (+ the user's studies)"),
    data: Optional[Path] = typer.Option(None, "--data", help="zoo meta-dataset folder (default: the shipped one)"),
    journals: bool = typer.Option(False, "--journals", help="also use the zoo's chunks still in progress"),
    studies: Optional[list[Path]] = typer.Option(None, "--studies", help="users' study runs CSV (repeatable; default the user's)"),
    user_studies: bool = typer.Option(True, "--user-studies/--no-user-studies", help="learn from the user's finished studies too"),
    out: Optional[Path] = typer.Option(None, "--out", help="directory for model.npz (default: the user's)"),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="log the fitted model to MLflow"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri"),
    experiment: str = typer.Option("autoopt-recommender", "--experiment"),
    n_estimators: int = typer.Option(60, "--n-estimators", min=1),
    evidence_k: float = typer.Option(0.5, "--evidence-k", min=0.01, help="evidence (tasks) at which model and rules weigh the same"),
    as_json: bool = typer.Option(False, "--json", help="the whole record: data, parameters, the selection's CV table"),
) -> None:
    """Fit the regret model (estimator chosen by leave-family-out CV) and save (and log) it."""
    from autoopt.recommend import meta

    data, studies = _data_options(data, studies)
    if not user_studies and not studies:
        studies = []
    try:
        info = meta.fit_model(
            data, out, journals=journals, studies=studies, log_mlflow=mlflow, tracking_uri=tracking_uri,
            experiment=experiment, n_estimators=n_estimators, evidence_k=evidence_k,
        )
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(meta.dumps(info) if as_json else fit_summary(info))


def fit_summary(info: dict[str, Any]) -> str:
    """What ``meta fit`` did, in the few lines a user reads (``--json`` has the rest)."""
    from autoopt.recommend.recommender import user_dir

    mine = info.get("studies") or []
    shown = ", ".join(mine[:5]) + (f" and {len(mine) - 5} more" if len(mine) > 5 else "")
    params = info.get("params") or {}
    chosen = next((c for c in info.get("selection") or []
                   if all(params.get(k) == v for k, v in c.items() if not k.startswith("cv_"))), None)
    cv = f", leave-family-out CV regret {chosen['cv_regret_at_picked_lr']}" if chosen else ""
    lines = [
        f"fitted on {info['tasks']} tasks of {info['families']} families ({info['rows']} rows): "
        f"{info['tasks'] - len(mine)} zoo tasks and {len(mine)} of your studies" + (f" ({shown})" if mine else ""),
        f"estimator: {params.get('estimator', '?')}{cv}; shrinkage {params.get('shrinkage')}, "
        f"evidence_k {params.get('evidence_k')}",
        f"saved: {', '.join(info['files'])} " + ("(`autoopt recommend` answers with it from now on)"
                                                  if Path(info["out_dir"]).resolve() == user_dir().resolve()
                                                  else f"(`autoopt recommend --model {info['files'][0]}` answers with it)"),
    ]
    if info.get("mlflow"):
        m = info["mlflow"]
        lines.append(f"MLflow: run {m['run_id']} at {m['tracking_uri']} (model {m['model_uri']})")
    return "\n".join(lines)


@meta_app.command("evaluate")
def meta_evaluate(
    zoo: bool = typer.Option(True, "--zoo", help="leave one zoo task family out (the only evaluation)"),
    data: Optional[Path] = typer.Option(None, "--data", help="zoo meta-dataset folder (default: the shipped one)"),
    journals: bool = typer.Option(False, "--journals", help="also use the zoo's chunks still in progress"),
    families: Optional[list[str]] = typer.Option(None, "--family", help="hold out only this family (repeatable)"),
    as_json: bool = typer.Option(False, "--json"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the results (JSON + a markdown table) to this folder"),
) -> None:
    """Leave one task family out: the recommender vs fixed configurations, hindsight baselines and rules only."""
    from autoopt.recommend import evaluate as ev
    from autoopt.recommend import meta

    data, _ = _data_options(data, None)
    try:
        grids, summary = meta.grids_from(data, journals=journals, studies=[])
        result = ev.evaluate(grids, families=families or None, log=lambda m: typer.echo(m, err=True))
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    result["data"].update(runs=summary["runs"], zoo_updated=summary["zoo_updated"])
    table = ev.markdown(result)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(meta.dumps(result) + "\n")
        (out / "summary.md").write_text(table + "\n")
    typer.echo(meta.dumps(result) if as_json else table)


# ============================================================================ standalone
app = typer.Typer(help="autoopt recommender", no_args_is_help=True, add_completion=False)
app.command("recommend")(recommend_command)
app.add_typer(meta_app, name="meta")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
