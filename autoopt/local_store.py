"""A new local MLflow store, copied from an empty one instead of built by migration.

MLflow creates a SQLite store by running its whole Alembic migration chain (about 3 s of CPU on
2 cores), and every new project folder gets a new store: a user's first study there, and each
test in a fresh folder, paid it. The first store made on a machine (per MLflow version) is kept
empty in a cache folder; later new stores are a copy of it, with the one row that depends on the
folder (the Default experiment's artifact location) set as MLflow would have set it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

from autoopt.cache import cache_dir


def _template() -> Path:
    import mlflow

    return cache_dir() / f"mlflow-{mlflow.__version__}-empty.db"


def _make_template(path: Path) -> None:
    """Let MLflow build an empty store (its migrations) in a private file, then publish it atomically."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}"
    # MLflow logs "Creating initial MLflow database tables..." at INFO: this is a cache, not the
    # user's store, so a user's first study does not print it
    quiet = logging.getLogger("mlflow.store.db.utils")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        store = SqlAlchemyStore(f"sqlite:///{scratch}", str(path.parent / "unused-artifacts"))
    finally:
        quiet.setLevel(level)
    store.engine.dispose()
    os.replace(scratch, path)


def _default_artifact_location() -> str:
    """Experiment 0's artifact location as MLflow sets it for a store opened from this process."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.utils.uri import append_to_uri_path, resolve_uri_if_local

    return append_to_uri_path(resolve_uri_if_local(DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH), "0")


def ensure_local_store(path: str | Path) -> bool:
    """Create the SQLite store ``path`` from the cached empty store if it does not exist yet.

    True if this call created it. Never overwrites: a store another process made meanwhile wins.
    Any problem (no cache folder, a read-only disk) leaves ``path`` alone and returns False, so
    MLflow creates the store itself as before."""
    target = Path(path)
    if target.exists():
        return False
    try:
        template = _template()
        if not template.exists():
            _make_template(template)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, scratch = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out, open(template, "rb") as src:
                out.write(src.read())
            now = int(time.time() * 1000)
            with sqlite3.connect(scratch) as db:
                db.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
                           "WHERE experiment_id = 0", (_default_artifact_location(), now, now))
            db.close()
            os.link(scratch, target)  # fails if the store appeared meanwhile: that one is kept
            return True
        finally:
            os.unlink(scratch)
    except Exception:  # noqa: BLE001 - MLflow creates it the slow way
        return False
