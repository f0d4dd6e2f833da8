"""Read the zoo's dense-sweep meta-dataset: runs joined with their instance's traits, and the manifest.

The files are written by :mod:`autoopt.recommend.sweep` (``autoopt meta build --zoo``); the
package ships them in ``autoopt/recommend/data/zoo/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autoopt.recommend.sweep import INSTANCES, MANIFEST, SCHEMA_VERSION, default_out_dir, read_instances, read_runs


def load(path: str | Path | None = None, *, journals: bool = False) -> tuple[Any, dict[str, Any]]:
    """(runs joined with instances as a pandas DataFrame, manifest dict) of the zoo at ``path``.

    One row per run: the run's columns (instance, optimizer, lr, seed, status, value,
    final_train_loss, seconds, reason) plus the instance's (family, domain, knobs, batch_size,
    n_params, dataset_size, grad_sparsity, sparse_gradients, metric, direction, steps).
    ``journals=True`` adds the runs of chunks still in progress.
    """
    import pandas as pd

    root = Path(path) if path is not None else default_out_dir()
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no zoo meta-dataset at {root} (missing {MANIFEST}); build one with "
                                "`autoopt meta build --zoo --out DIR`")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{manifest_path}: schema version {manifest.get('schema_version')!r}, "
                         f"this autoopt reads {SCHEMA_VERSION}")
    files = sorted(root.glob("runs-*.csv.gz"))
    if journals and (root / ".journal").is_dir():
        files += sorted((root / ".journal").glob("runs-*.csv"))
    runs = [r for f in files for r in read_runs(f)]
    columns = ["instance", "optimizer", "lr", "seed", "status", "value", "final_train_loss", "seconds", "reason"]
    runs_df = pd.DataFrame(runs, columns=columns).drop_duplicates(["instance", "optimizer", "lr", "seed"], keep="last")
    instances = pd.DataFrame(read_instances(root / INSTANCES)) if (root / INSTANCES).is_file() else pd.DataFrame(columns=["instance"])
    table = runs_df.merge(instances, on="instance", how="left", validate="many_to_one")
    return table.reset_index(drop=True), manifest
