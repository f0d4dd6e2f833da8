"""Fit a study's per-trial resources to the Ray cluster: resolve ``gpus_per_trial: auto`` and
refuse, within seconds, a request that no node can ever provide.

Ray queues a task whose resources no node has and waits forever without a word (a study asking
for GPUs on a laptop sat silent for minutes). On a fixed cluster that is a usage error naming the
request and what the nodes have. On an autoscaling cluster a node that fits may still be added, so
the study starts and the runner warns every minute while no node fits yet.
"""

from __future__ import annotations

import math
import os
from typing import Any

from autoopt.spec import SpecError

#: Set to 1 when the Ray cluster autoscales but Ray does not publish its node types (then a
#: request that fits no current node is waited for, with a warning, not refused); 0 forces refusal.
ENV_AUTOSCALING = "AUTOOPT_AUTOSCALING"
#: Seconds between the warnings while trials wait for resources no node has yet.
ENV_WARN_S = "AUTOOPT_RESOURCE_WARN_S"
#: Resources Ray adds to every node that a trial never asks for.
_IMPLICIT = ("memory", "object_store_memory")


class ResourcesUnavailableWarning(UserWarning):
    """Trials wait for resources that no node of the cluster has (yet)."""


def warn_interval_s() -> float:
    return float(os.environ.get(ENV_WARN_S) or 60.0)


def alive_nodes() -> list[dict[str, float]]:
    """The resources of each alive node of the connected Ray cluster."""
    import ray

    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def _autoscaling_node_types() -> list[dict[str, float]] | None:
    """Resources of each node type the autoscaler may start (None: not an autoscaling cluster
    as far as Ray publishes; the explicit setting decides then)."""
    setting = os.environ.get(ENV_AUTOSCALING, "").strip().lower()
    if setting in ("0", "false", "no"):
        return None
    types: list[dict[str, float]] | None = None
    try:  # the autoscaler publishes its node groups in the GCS (what Ray Train checks too)
        from ray._private.state import state

        config = state.get_cluster_config()
        if config is not None:
            types = [dict(g.resources) for g in config.node_group_configs if g.max_count != 0] or None
    except Exception:  # noqa: BLE001 - Ray client, older layouts: no published config
        types = None
    if types is None and setting in ("1", "true", "yes"):
        return [{}]  # scales, node types unknown: any request may become feasible
    return types


def _fits(request: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(k, 0.0) + 1e-9 >= v for k, v in request.items() if v > 0)


def _describe(node: dict[str, float]) -> str:
    shown = {k: v for k, v in node.items() if k not in _IMPLICIT and not k.startswith("node:")}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shown.items())) + "}"


def describe_request(request: dict[str, float]) -> str:
    return _describe({k: v for k, v in request.items() if v > 0})


def resolve_gpus(gpus_per_trial: float | str, workers: int, nodes: list[dict[str, float]]) -> float:
    """``auto``: one trial per GPU when there are GPUs for every worker, else an equal share that
    packs all workers on the GPUs (1/2, 1/3, ...); 0 (CPU) where the cluster has no GPU."""
    if gpus_per_trial != "auto":
        return float(gpus_per_trial)
    gpus = sum(n.get("GPU", 0.0) for n in nodes)
    if gpus <= 0:
        return 0.0
    # Ray keeps resource amounts to 4 decimals: round a share like 1/3 down so packing still fits
    return math.floor(1e4 / math.ceil(workers / gpus)) / 1e4 if workers > gpus else 1.0


def check_fits(request: dict[str, float], nodes: list[dict[str, float]], fields: dict[str, Any]) -> bool:
    """Raise SpecError if no node, now or after autoscaling, can run one trial. Returns True when
    a node fits now, False when trials will wait for the autoscaler."""
    if any(_fits(request, n) for n in nodes):
        return True
    types = _autoscaling_node_types()
    if types is not None and any(not t or _fits(request, t) for t in types):
        return False
    asked = ", ".join(f"{k}={v}" for k, v in fields.items())
    have = "; ".join(_describe(n) for n in nodes) or "no alive node"
    hint = " (gpus_per_trial: auto uses a GPU where there is one, else the CPU)" if request.get("GPU") else ""
    raise SpecError(
        f"no node of the Ray cluster can run a trial: each asks for {describe_request(request)} ({asked}), "
        f"but the nodes have {have}{hint}. Lower the request, or for an autoscaling cluster set "
        f"{ENV_AUTOSCALING}=1."
    )


def waiting_message(request: dict[str, float], nodes: list[dict[str, float]], pending: int, waited_s: float) -> str | None:
    """A warning while no current node fits the request (the autoscaler has not added one yet)."""
    if any(_fits(request, n) for n in nodes):
        return None
    have = "; ".join(_describe(n) for n in nodes) or "no alive node"
    return (f"autoopt: {pending} trial(s) have waited {waited_s:.0f} s for {describe_request(request)}: no node of "
            f"the cluster has that yet (nodes: {have}); waiting for the autoscaler to add one")
