"""Does a task's gradient scale at initialisation place the SGD family's learning rate? (issue #11)

Issue #11 says the recommender's weak point is the suggested *lr*, not the optimizer, and names
SGD at lr 0.11 on a small regression MLP. Plain SGD's step is ``lr * g``: its best lr should move
inversely with the gradient's size, which the traits the recommender has (domain, batch size,
sizes, sparsity) do not measure. Adam-type steps are invariant to the gradient's scale, so for
them it should carry no information. This script measures both claims on the zoo, leaving whole
families out as ``autoopt meta evaluate`` does:

1. *probe*: every zoo instance's RMS gradient entry at initialisation (seed 0, the mean over its
   first ``PROBE_BATCHES`` training batches of the mean squared gradient entry, square-rooted);
   a fraction of a second per task, the same backward passes the sparsity trait already takes;
2. per fold (one family held out), the shipped recipe's model fitted on the other families
   (:func:`autoopt.recommend.evaluate.default_fit`) and the recommender on it answer every
   held-out task with its traits; each optimizer's suggested lr is looked up on the task's grid;
3. the *gradient-scale rule*: ``log10 lr = a_o - log10 grad_rms``, with ``a_o`` the mean of
   ``log10 best lr + log10 grad_rms`` over the training families (each family weighs as one),
   one number per optimizer and fold, nothing else fitted.

    PYTHONPATH=. python -m bench.recommender_grad_scale --out bench/results/recommender-grad-scale

Writes ``probes.jsonl`` (resumable), ``results.json`` and ``summary.md``.

``--reference`` checks the shipped answer outside the zoo instead: on each reference task (cv,
tabular, nlp, recsys: none of them a zoo instance), SGD with momentum trained at a
half-decade lr grid (the zoo's schedule policy, 2 seeds, the task's own epochs), then the shipped
recommender's momentum lr with the task's measured traits, with and without its gradient scale,
looked up on that grid (0 = the grid's best momentum run, 1 = its median). Writes
``reference.json`` and ``reference.md`` (resumable per task).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

#: Training batches the probe averages over.
PROBE_BATCHES = 8
#: The optimizers compared: the SGD family the rule is for, and Adam-type controls it should not help.
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adamw", "schedulefree_adamw", "lamb")


def probe(instance_id: str, batches: int = PROBE_BATCHES) -> dict[str, Any]:
    """RMS gradient entry (and the mean gradient's norm, the loss) at initialisation, seed 0."""
    import torch

    from autoopt.tasks.zoo import load_instance

    torch.manual_seed(0)
    task = load_instance(instance_id)
    torch.manual_seed(0)
    model = task.build_model()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    train, _ = task.loaders()
    squares, mean, losses = 0.0, None, []
    seen = 0
    for i, batch in enumerate(train):
        if i >= batches:
            break
        output, target = task.forward(model, batch, torch.device("cpu"))
        loss = task.loss(output, target)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = torch.cat([(g.to_dense() if g.is_sparse else g).reshape(-1) if g is not None else torch.zeros(p.numel())
                          for g, p in zip(grads, params)])
        squares += float(flat.pow(2).mean())
        mean = flat if mean is None else mean + flat
        losses.append(float(loss.detach()))
        seen += 1
    return {"instance": instance_id, "grad_rms": math.sqrt(squares / seen), "grad_norm": float((mean / seen).norm()),
            "loss0": float(np.mean(losses)), "n_params": int(sum(p.numel() for p in params))}


def probe_all(path: Path) -> dict[str, dict[str, Any]]:
    """Every zoo instance's probe, resumed from ``path`` (one JSON line per instance)."""
    import torch

    from autoopt.tasks.zoo import instances

    torch.set_num_threads(1)
    done = {}
    if path.is_file():
        done = {r["instance"]: r for r in map(json.loads, path.read_text().splitlines())}
    with path.open("a") as out:
        for iid in instances():
            if iid not in done:
                done[iid] = probe(iid)
                out.write(json.dumps(done[iid]) + "\n")
                out.flush()
    return done


def rule_intercepts(grids: Mapping[str, Any], probes: Mapping[str, Mapping[str, Any]],
                    optimizers: tuple[str, ...]) -> dict[str, float]:
    """Per optimizer: mean over families of the family-mean ``log10 best lr + log10 grad_rms``."""
    out = {}
    for o in optimizers:
        by_family: dict[str, list[float]] = {}
        for name, g in grids.items():
            if o in g.curves:
                by_family.setdefault(g.family, []).append(math.log10(g.curves[o].best[0]) + math.log10(probes[name]["grad_rms"]))
        out[o] = float(np.mean([np.mean(v) for v in by_family.values()]))
    return out


def evaluate(grids: Mapping[str, Any], probes: Mapping[str, Mapping[str, Any]], log=print) -> dict[str, Any]:
    """Leave one family out: each optimizer's regret at the recommender's lr, the fold model's lr,
    the training families' mean best lr and the gradient-scale rule's lr."""
    from autoopt.recommend.evaluate import default_fit, traits_of
    from autoopt.recommend.recommender import CatalogView, CompiledModel, Recommender
    from autoopt.recommend.rules import RuleBook

    rules, catalog = RuleBook.load(), CatalogView.current()
    rows = []
    for fam in sorted({g.family for g in grids.values()}):
        started = time.time()
        train = {k: g for k, g in grids.items() if g.family != fam}
        test = {k: g for k, g in grids.items() if g.family == fam}
        model = CompiledModel.from_estimator(default_fit(train))
        rec = Recommender(rules=rules, model=model, catalog=catalog)
        intercept = rule_intercepts(train, probes, OPTIMIZERS)
        mean_lr = {o: float(np.mean([np.mean([math.log10(g.curves[o].best[0]) for g in train.values() if g.family == f])
                                     for f in {g.family for g in train.values()}])) for o in OPTIMIZERS}
        for name, g in sorted(test.items()):
            t = traits_of(g)
            ranked = {r.optimizer: r.hyperparameters["lr"] for r in rec.rank(t, top=None, candidates=list(OPTIMIZERS))}
            answers = model.best_lrs(t, list(OPTIMIZERS))
            for o in OPTIMIZERS:
                lrs = {"recommender": ranked.get(o), "model": answers[o].lr if o in answers else None,
                       "mean_lr": 10 ** mean_lr[o], "grad_scale": 10 ** (intercept[o] - math.log10(probes[name]["grad_rms"]))}
                best = g.curves[o].best[0]
                rows.append({"family": fam, "task": name, "optimizer": o, "best_lr": best, "tuned": g.tuned(o)[0],
                             **{f"lr_{k}": v for k, v in lrs.items()},
                             **{f"regret_{k}": g.lookup(o, v)[0] for k, v in lrs.items()},
                             **{f"err_{k}": (math.log10(v) - math.log10(best)) if v else None for k, v in lrs.items()}})
        log(f"held out {fam}: {len(test)} tasks ({time.time() - started:.0f} s)")
    return {"rows": rows, "summary": summarise(rows)}


STRATEGIES = ("recommender", "model", "mean_lr", "grad_scale")


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for o in OPTIMIZERS:
        mine = [r for r in rows if r["optimizer"] == o]
        fams = sorted({r["family"] for r in mine})
        entry: dict[str, Any] = {"tuned": float(np.mean([r["tuned"] for r in mine]))}
        for s in STRATEGIES:
            errs = [r[f"err_{s}"] for r in mine if r[f"err_{s}"] is not None]
            entry[s] = {
                "regret": float(np.mean([r[f"regret_{s}"] for r in mine])),
                "lr_rms_decades": float(np.sqrt(np.mean(np.square(errs)))) if errs else None,
                "per_family": {f: float(np.mean([r[f"regret_{s}"] for r in mine if r["family"] == f])) for f in fams},
            }
        rec = entry["recommender"]["per_family"]
        entry["grad_scale_better_families"] = sum(entry["grad_scale"]["per_family"][f] < rec[f] - 1e-9 for f in fams)
        entry["grad_scale_worse_families"] = sum(entry["grad_scale"]["per_family"][f] > rec[f] + 1e-9 for f in fams)
        entry["families"] = len(fams)
        out[o] = entry
    return out


def markdown(summary: Mapping[str, Any]) -> str:
    lines = ["| optimizer | tuned | recommender's lr | fold model's lr | training families' mean lr | gradient-scale rule | "
             "rule better / worse than the recommender (families) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for o, e in summary.items():
        cells = [f"{e[s]['regret']:.3f} ({e[s]['lr_rms_decades']:.2f} dec)" for s in STRATEGIES]
        lines.append(f"| {o} | {e['tuned']:.3f} | " + " | ".join(cells)
                     + f" | {e['grad_scale_better_families']} / {e['grad_scale_worse_families']} of {e['families']} |")
    return ("Mean normalised regret as suggested over the held-out tasks (lr error, RMS in decades, in brackets)\n\n"
            + "\n".join(lines) + "\n")


#: The out-of-zoo check's momentum lr grid (log10; half-decade steps, as the zoo's).
REFERENCE_LOG_LRS = tuple(x / 2 for x in range(-8, 2))
REFERENCE_SEEDS = (0, 1)


def reference_task(name: str) -> dict[str, Any]:
    """Momentum's grid on one reference task and the shipped recommender's lrs for it."""
    import torch

    from autoopt.recommend.recommender import Recommender
    from autoopt.recommend.regret import interpolate
    from autoopt.recommend.sweep import trial_config
    from autoopt.task import load_task
    from autoopt.train import train

    torch.set_num_threads(1)
    task = load_task(name)
    traits = task.traits()
    rec = Recommender.default()
    lrs = {}
    for label, t in (("with_grad_scale", traits), ("without", traits.replace(grad_rms=None))):
        ranked = {r.optimizer: r for r in rec.rank(t, top=None)}
        if "momentum" not in ranked:
            return {"task": name, "skipped": "the recommender does not offer momentum for this task"}
        lrs[label] = ranked["momentum"].hyperparameters["lr"]
    sign = 1.0 if task.direction == "maximize" else -1.0
    grid = []
    for x in REFERENCE_LOG_LRS:
        values = []
        for seed in REFERENCE_SEEDS:
            outcome = train(task, trial_config("momentum", 10 ** x), seed=seed)
            ok = outcome.status == "complete" and outcome.value is not None and math.isfinite(outcome.value)
            values.append(sign * outcome.value if ok else math.nan)
        grid.append({"log10_lr": x, "values": values})
    means = np.array([np.mean(g["values"]) if all(math.isfinite(v) for v in g["values"]) else np.nan for g in grid])
    best = float(np.nanmax(means))
    median = float(np.median(np.where(np.isfinite(means), means, -np.inf)))
    span = best - median if best > median else max(abs(best), 1.0) * 1e-3
    regret = np.where(np.isfinite(means), np.clip((best - means) / span, 0, 3), 3.0)
    x = np.array(REFERENCE_LOG_LRS)
    return {"task": name, "grad_rms": traits.grad_rms, "best_lr": float(10 ** x[int(np.nanargmax(means))]), "grid": grid,
            "lr": lrs, "regret": {k: float(interpolate(x, regret, math.log10(v))) for k, v in lrs.items()}}


def reference(out: Path) -> dict[str, Any]:
    from autoopt.core.tasks import REFERENCE_TASKS

    path = out / "reference.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    for name in REFERENCE_TASKS:
        if name not in done:
            started = time.time()
            done[name] = reference_task(name)
            path.write_text(json.dumps(done, indent=1))
            print(f"{name}: {time.time() - started:.0f} s", flush=True)
    lines = ["| task | grad RMS | best momentum lr (grid) | lr with the gradient scale | regret | lr without | regret |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    done_ok = {k: r for k, r in done.items() if "skipped" not in r}
    for name, r in done.items():
        if "skipped" in r:
            lines.append(f"| {name} | {r['skipped']} | | | | | |")
            continue
        lines.append(f"| {name} | {r['grad_rms']:.3g} | {r['best_lr']:.3g} | {r['lr']['with_grad_scale']:.3g} | "
                     f"{r['regret']['with_grad_scale']:.3f} | {r['lr']['without']:.3g} | {r['regret']['without']:.3f} |")
    lines.append(f"| **mean** | | | | {np.mean([r['regret']['with_grad_scale'] for r in done_ok.values()]):.3f} | | "
                 f"{np.mean([r['regret']['without'] for r in done_ok.values()]):.3f} |")
    (out / "reference.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reference", action="store_true", help="the out-of-zoo check on the reference tasks")
    args = parser.parse_args(argv)
    if args.reference:
        args.out.mkdir(parents=True, exist_ok=True)
        reference(args.out)
        return 0
    from autoopt.recommend.meta import grids_from

    args.out.mkdir(parents=True, exist_ok=True)
    probes = probe_all(args.out / "probes.jsonl")
    grids, _ = grids_from(studies=[])
    result = evaluate(grids, probes)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    (args.out / "summary.md").write_text(markdown(result["summary"]))
    print(markdown(result["summary"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
