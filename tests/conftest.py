"""Shared fixtures: one real local Ray instance, a fresh PostgreSQL database, a temp workdir.

Helper tasks live in tests/helper_tasks.py; tests/ is put on PYTHONPATH before Ray starts so
Ray workers can import them (they are sent by reference, as a user's own task would be).
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(TESTS))
sys.path.insert(1, str(TESTS.parent))  # bench/ (tests of the benchmark helpers) with a bare `pytest` too
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# finished studies feed the recommender's meta-dataset: keep the tests' studies out of the user's
os.environ["AUTOOPT_RECOMMEND_DIR"] = tempfile.mkdtemp(prefix="autoopt-recommend-")
# the empty MLflow store new local stores are copied from (autoopt.local_store): made once per session
os.environ["AUTOOPT_CACHE_DIR"] = tempfile.mkdtemp(prefix="autoopt-cache-")
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
# tests read a study's MLflow parent run (plots, final status) right after run() returns: the
# end-of-study report is written before it returns here (tests/test_engine.py covers the default)
os.environ["AUTOOPT_REPORT_IN_BACKGROUND"] = "0"
# a report's PNGs come from matplotlib: kaleido starts a Chromium for every report (about 4 CPU-s against
# 0.9 on 2 cores, where CI has Chromium); tests/test_report.py covers the kaleido path itself
os.environ["AUTOOPT_PNG_ENGINE"] = "matplotlib"

# A test run started in the background of a non-interactive shell (`make test &`, `nohup ... &`)
# inherits SIGINT ignored, and so would every `autoopt run` a test starts: the Ctrl-C tests'
# drivers then never see the SIGINT they are sent and run on until the test times out (what the
# runs by hand on 2026-12-04 hit: /proc/<driver>/status SigIgn had SIGINT). A terminal's Ctrl-C
# is what those tests stand for, so the test processes and their children get the default back.
import signal  # noqa: E402

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

CLUSTER_TESTS = "tests/test_cluster.py"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``make test``'s cluster phase runs CLUSTER_TESTS alone (collecting every file only to
    deselect them took 8 CPU-s of imports): a cluster test anywhere else would never run there."""
    strays = [item.nodeid for item in items
              if item.get_closest_marker("cluster") and item.nodeid.split("::")[0] != CLUSTER_TESTS]
    if strays:
        raise pytest.UsageError(f"cluster tests belong in {CLUSTER_TESTS} (the Makefile runs that file alone): {strays}")


PG_ADMIN = os.environ.get("AUTOOPT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (2 CPUs, as on CI), started as a study starts it
    (bound to 127.0.0.1 only)."""
    import ray

    from autoopt.runner import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def pg_url():
    """A new, empty PostgreSQL database for this test session (dropped afterwards)."""
    import sqlalchemy as sa

    name = f"autoopt_test_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - CI always has PostgreSQL
        pytest.fail(f"PostgreSQL at {PG_ADMIN} is required for these tests: {exc}")
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as c:
        c.execute(sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a temp working directory, as a new user would (embedded stores land here)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AUTOOPT_STORAGE", raising=False)
    monkeypatch.delenv("AUTOOPT_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path
