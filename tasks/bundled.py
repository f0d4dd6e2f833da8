"""scikit-learn's bundled data sets, read once and then from a cache of plain arrays.

The reference tasks train on data that ships with scikit-learn (digits, diabetes). Importing
``sklearn.datasets`` costs about 1 CPU-second (SciPy, pandas), and every trial worker process
that builds such a task paid it for a few kilobytes of numbers. The arrays are kept as ``.npz``
under :func:`autoopt.cache.cache_dir`, one file per scikit-learn version and loader call;
a missing or unreadable file is made again from scikit-learn.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from autoopt.cache import cache_dir


def _path(loader: str, options: dict[str, Any]) -> Path:
    tail = "".join(f"-{k}={options[k]}" for k in sorted(options))
    return cache_dir() / "datasets" / f"sklearn-{version('scikit-learn')}-{loader}{tail}.npz"


def load(loader: str, fields: tuple[str, ...], **options: Any) -> dict[str, np.ndarray]:
    """``sklearn.datasets.<loader>(**options)``'s ``fields`` as arrays, from the cache when it has them."""
    path = _path(loader, options)
    try:
        with np.load(path, allow_pickle=False) as saved:
            if set(fields) <= set(saved.files):
                return {f: saved[f] for f in fields}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # not there yet, or cut short: made again below
        pass
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, loader)(**options)
    arrays = {f: np.asarray(bunch[f]) for f in fields}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as out:
            np.savez(out, **arrays)
        os.replace(tmp, path)  # whole or not at all: concurrent workers may race to write it
    except OSError:  # a read-only home, a full disk: the data is still returned, only not kept
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return arrays
