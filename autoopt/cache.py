"""autoopt's cache folder on this machine: things made once and reused by every project folder
(an empty MLflow store per MLflow version, the reference tasks' bundled datasets). Anything in it
can be deleted; it is made again when next needed."""

from __future__ import annotations

import os
from pathlib import Path

#: Overrides the cache folder (the tests use one per session).
ENV_CACHE_DIR = "AUTOOPT_CACHE_DIR"


def cache_dir() -> Path:
    """``$AUTOOPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/autoopt``, else ``~/.cache/autoopt``."""
    explicit = os.environ.get(ENV_CACHE_DIR)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "autoopt"


__all__ = ["ENV_CACHE_DIR", "cache_dir"]
