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
#: the files whose tests start Ray inside the pytest process (the session's ``ray_local``, or
#: ``autoopt.run``), which then stays up for the rest of that process. An idle local Ray costs
#: about 0.15 of a core (its GCS, raylet, agents and idle workers; measured 2026-12-07), so under
#: ``make test`` (``--dist loadgroup``) these files go to one pytest-xdist worker, first, and the
#: others never start one: one session Ray instead of one per worker. A test elsewhere that
#: starts Ray is an error (``pytest_runtest_call`` below) naming this list.
RAY_FILES = frozenset(f"tests/test_{name}.py" for name in (
    "drivers", "engine", "integrations", "objective", "pruners", "real_clients", "resources", "study", "sync",
    "zoo"))
RAY_GROUP = "ray-in-process"


def _file(item: pytest.Item) -> str:
    return item.nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``make test``'s cluster phase runs CLUSTER_TESTS alone (collecting every file only to
    deselect them took 8 CPU-s of imports): a cluster test anywhere else would never run there.
    Under ``--dist loadgroup`` each file is a group of its own (as ``loadfile``: its module
    fixtures made once), except RAY_FILES, which form one group scheduled first (it is the
    longest)."""
    strays = [item.nodeid for item in items
              if item.get_closest_marker("cluster") and _file(item) != CLUSTER_TESTS]
    if strays:
        raise pytest.UsageError(f"cluster tests belong in {CLUSTER_TESTS} (the Makefile runs that file alone): {strays}")
    if config.getoption("dist", "no") == "loadgroup":
        for item in items:
            item.add_marker(pytest.mark.xdist_group(RAY_GROUP if _file(item) in RAY_FILES else _file(item)))
        items.sort(key=lambda item: _file(item) not in RAY_FILES)  # stable: each file keeps its order


_RAY_BEFORE = pytest.StashKey[bool]()


def _ray_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_RAY_BEFORE] = _ray_up()  # before the test's fixtures (``ray_local``) are made


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A test outside RAY_FILES must not leave a Ray running in the pytest process (see there)."""
    result = yield
    if not item.stash.get(_RAY_BEFORE, True) and _ray_up() and _file(item) not in RAY_FILES:
        pytest.fail(f"{item.nodeid} started Ray in the pytest process: add its file to RAY_FILES in "
                    "tests/conftest.py, so that `make test` keeps every in-process Ray on one worker",
                    pytrace=False)
    return result


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
