"""Trust boundaries (issue 12): what a study storage, a data file or a study name written by
someone else can make autoopt do, and which secrets it can make autoopt reveal. Each probe is
run for real: the CLI in a subprocess, a real PostgreSQL, a real local Ray and MLflow store.
docs/security.md lists the probes and what each one checks."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import optuna
import pytest

from autoopt.task import Task, TaskNotFound, load_task

TESTS = Path(__file__).resolve().parent


def autoopt(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    # the user's places come only from ``env``: none inherited from what earlier tests left in os.environ
    base = {k: v for k, v in os.environ.items() if k not in (
        "AUTOOPT_STORAGE", "AUTOOPT_TRACKING_URI", "MLFLOW_TRACKING_URI", "AUTOOPT_RAY_ADDRESS", "RAY_ADDRESS")}
    e = {**base, "COLUMNS": "400", **(env or {})}  # rich wraps nothing: one message, one line
    return subprocess.run([sys.executable, "-m", "autoopt.cli", *args], cwd=cwd, env=e, capture_output=True,
                          text=True, timeout=timeout)


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# --- 1. specs are code: only trusted import paths are imported, only Tasks are called -------------
def test_an_imported_task_must_be_a_task_class_or_factory(tmp_path):
    marker = tmp_path / "ran"
    for ref, options in (("os:system", {"command": f"touch {marker}"}),
                         ("shutil:rmtree", {"path": str(tmp_path)}),
                         ("helper_tasks:not_a_factory", {"marker": str(marker)}),
                         ("collections:OrderedDict", {})):
        with pytest.raises(TaskNotFound, match="not an autoopt.Task subclass|not a subclass of autoopt.Task"):
            load_task(ref, **options)
    assert not marker.exists() and tmp_path.is_dir()
    # a Task subclass and a function annotated to return a Task are what a spec may name
    assert isinstance(load_task("helper_tasks:SlowTask", sleep_s=0.0, size=0.25), Task)
    assert load_task("helper_tasks:make_slow_task", size=0.25).name == "slow"


def test_trust_patterns(monkeypatch):
    from autoopt.trust import UntrustedImport, check_trusted, is_trusted

    monkeypatch.setenv("AUTOOPT_TRUSTED_TASKS", "mypkg.tasks:Net, other.*")
    assert is_trusted("cv") and is_trusted("autoopt.tasks.cv:DigitsCNN") and is_trusted("autoopt.tasks.zoo.vision:X")
    assert is_trusted("mypkg.tasks:Net") and not is_trusted("mypkg.tasks:Other") and not is_trusted("mypkg.tasksx:Net")
    assert is_trusted("other:X") and is_trusted("other.sub:X") and not is_trusted("otherwise:X")
    assert is_trusted("evil:x", extra=["evil"]) and not is_trusted("evil:x") and not is_trusted("autoopt_tasks_evil:x")
    with pytest.raises(UntrustedImport, match="--trust-task evil:x"):
        check_trusted("evil:x", "the spec stored with study 's'")


def _stored_study(url: str, name: str, task: str, task_options: dict | None = None) -> None:
    """A study as someone with write access to a shared storage could leave it."""
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    study.set_user_attr("autoopt.spec", {"name": name, "task": task, "task_options": task_options or {},
                                         "n_trials": 1, "tracking": False})


@pytest.mark.slow
def test_resume_does_not_import_a_task_path_read_from_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    imported, called = tmp_path / "imported", tmp_path / "called"
    _stored_study(url, "planted", "helper_untrusted:payload", {"marker": str(called)})
    _stored_study(url, "shell", "os:system", {"command": f"touch {called}"})
    env = {"AUTOOPT_TEST_IMPORT_MARKER": str(imported)}
    env_untrusted = {**env, "AUTOOPT_TRUSTED_TASKS": ""}

    r = autoopt("resume", "planted", "--storage", url, cwd=tmp_path, env=env_untrusted, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "helper_untrusted:payload" in r.stderr and "--trust-task" in r.stderr and "AUTOOPT_TRUSTED_TASKS" in r.stderr
    assert not imported.exists(), "the module was imported although nobody trusted it"
    r = autoopt("resume", "shell", "--storage", url, cwd=tmp_path, env=env_untrusted, timeout=120)
    assert r.returncode == 2 and "'os:system'" in r.stderr and not called.exists()

    # trusted by the user: the module is imported, but what it names is not a Task, so nothing is called
    r = autoopt("resume", "planted", "--storage", url, "--trust-task", "helper_untrusted", cwd=tmp_path, env=env,
                timeout=120)
    assert r.returncode == 2 and "not an autoopt.Task subclass" in r.stderr, r.stderr[-2000:]
    assert imported.exists() and not called.exists()
    r = autoopt("resume", "shell", "--storage", url, cwd=tmp_path, env={**env, "AUTOOPT_TRUSTED_TASKS": "os"},
                timeout=120)
    assert r.returncode == 2 and "not an autoopt.Task subclass" in r.stderr and not called.exists()


@pytest.mark.slow
def test_meta_evaluate_does_not_import_a_task_path_read_from_data(tmp_path):
    """The evaluation looks configurations up on the zoo's dense grids: it trains nothing, so a
    task path planted in the data is never imported (here as the instances' family)."""
    import gzip

    import helper_zoo

    zoo = helper_zoo.write_zoo(tmp_path / "zoo", families=2)
    imported = tmp_path / "imported"
    for name in ("instances.csv",):
        text = (zoo / name).read_text().replace("tab_a", "helper_untrusted:payload")
        (zoo / name).write_text(text)
    with gzip.open(zoo / "runs-01.csv.gz", "rt") as f:
        runs = f.read().replace("tab_a", "helper_untrusted:payload")
    with gzip.open(zoo / "runs-01.csv.gz", "wt") as f:
        f.write(runs)
    r = autoopt("meta", "evaluate", "--zoo", "--data", str(zoo), cwd=tmp_path,
                env={"AUTOOPT_TEST_IMPORT_MARKER": str(imported), "AUTOOPT_TRUSTED_TASKS": ""}, timeout=120)
    assert r.returncode == 0 and "helper_untrusted:payload" in r.stdout, r.stderr[-2000:]
    assert not imported.exists()


# --- 2. credentials never leak ----------------------------------------------------------------
PASSWORD = "S3cretPW-" + uuid.uuid4().hex[:8]


def _with_password(url: str) -> str:
    """The test database's URL with a password (PostgreSQL's trust auth accepts any)."""
    scheme, rest = url.split("://", 1)
    user_host, db = rest.split("/", 1)
    user, host = user_host.split("@", 1)
    return f"{scheme}://{user}:{PASSWORD}@{host}/{db}"


def _dump_postgres(url: str) -> str:
    import sqlalchemy as sa

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    text = []
    with engine.connect() as c:
        tables = c.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
        assert "studies" in tables and "study_user_attributes" in tables
        for table in tables:
            # every value in full (a Row's own str() shortens long texts)
            text += [repr(tuple(row)) for row in c.execute(sa.text(f'SELECT * FROM "{table}"'))]
    engine.dispose()
    return "\n".join(text)


def _dump_sqlite(path: Path) -> str:
    import sqlite3

    con = sqlite3.connect(str(path))
    text = []
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert "runs" in tables and "params" in tables
    for table in tables:
        text += [str(row) for row in con.execute(f'SELECT * FROM "{table}"')]
    con.close()
    return "\n".join(text)


@pytest.mark.slow
def test_a_storage_password_appears_nowhere(tmp_path, pg_url):
    """A study on PostgreSQL with a password in the storage URL, then resume, status, best and list:
    the password is in no table of the Optuna database, no table or artifact of the MLflow
    store, no log of the study's Ray session, and no CLI output."""
    url = _with_password(pg_url)
    ray_tmp = Path(f"/tmp/ao-{uuid.uuid4().hex[:6]}")
    ray_tmp.mkdir()
    (tmp_path / "pw.yaml").write_text(
        "name: pwstudy\ntask: tabular\ntask_options: {size: 0.25, epochs: 2}\nn_trials: 2\nworkers: 1\n"
        "pruner: none\nspace: {optimizers: [adam], schedulers: [constant]}\n"
    )
    env = {"AUTOOPT_STORAGE": url, "RAY_TMPDIR": str(ray_tmp), "TMPDIR": str(ray_tmp)}
    outputs = []
    try:
        r = autoopt("run", "pw.yaml", "--json", cwd=tmp_path, env=env)
        outputs.append(r.stdout + r.stderr)
        assert r.returncode == 0, r.stderr[-3000:]
        summary = json.loads(r.stdout)
        assert summary["storage_url"] == url.replace(PASSWORD, "***")
        r = autoopt("resume", "pwstudy", "--trials", "3", "--json", cwd=tmp_path, env=env)
        outputs.append(r.stdout + r.stderr)
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads(r.stdout)["counts"]["complete"] == 3
        for args in (("status", "pwstudy"), ("best", "pwstudy"), ("list",), ("run", "nope.yaml"),
                     ("status", "nosuch", "--json")):
            r = autoopt(*args, cwd=tmp_path, env=env, timeout=180)
            outputs.append(r.stdout + r.stderr)
            assert r.returncode in (0, 2), (args, r.stderr[-2000:])
        # the stored spec and tracking URI are redacted, and the parent run's params too
        study = optuna.load_study(study_name="pwstudy", storage=pg_url)
        assert study.user_attrs["autoopt.spec"]["storage"] == url.replace(PASSWORD, "***")
        places = {
            "CLI output": "\n".join(outputs),
            "Optuna database": _dump_postgres(pg_url),
            "MLflow database": _dump_sqlite(tmp_path / "mlflow.db"),
        }
        artifacts = [p for p in (tmp_path / "mlartifacts").rglob("*") if p.is_file()]
        assert any(p.name == "spec.yaml" for p in artifacts)
        logs = [p for p in ray_tmp.rglob("*") if p.is_file() and not p.is_symlink()]
        assert any(p.suffix in (".out", ".err", ".log") for p in logs), "no Ray session logs to check"
        for p in artifacts + logs:
            try:
                places[str(p)] = p.read_bytes().decode("utf-8", "replace")
            except OSError:  # a socket or a file Ray removed meanwhile
                continue
        leaks = [where for where, text in places.items() if PASSWORD in text]
        assert not leaks, f"the password leaked into {leaks}"
        assert f"{url.split('@')[0].rsplit(':', 1)[0]}:***@" in places["Optuna database"], "no redacted URL stored"
        assert "***" in places["MLflow database"], "no redacted URL logged"
    finally:
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_tracking_warnings_redact_the_tracking_password():
    from local_cluster import free_port

    from autoopt.tracking import TrackingConfig, TrackingUnavailableWarning, _Connection

    uri = f"http://mlflow-user:{PASSWORD}@127.0.0.1:{free_port()}"  # nothing listens there
    conn = _Connection(TrackingConfig(tracking_uri=uri, experiment_name="x", retries=1, backoff_seconds=0.0,
                                      request_timeout_seconds=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok, _ = conn.call("probe", "search_experiments")
    assert not ok
    messages = [str(w.message) for w in caught if issubclass(w.category, TrackingUnavailableWarning)]
    assert messages and "mlflow-user:***@127.0.0.1" in messages[0]
    assert not [m for m in messages if PASSWORD in m]


def test_redaction_and_restore():
    from autoopt.redaction import redact, redact_text, restore

    full = f"postgresql://u:{PASSWORD}@db:5432/optuna?sslmode=require&password={PASSWORD}"
    shown = redact(full)
    assert PASSWORD not in shown and shown.startswith("postgresql://u:***@db:5432/optuna?sslmode=require")
    assert redact("sqlite:////abs/path/x.db") == "sqlite:////abs/path/x.db"
    assert PASSWORD not in redact_text(f"could not connect to http://a:{PASSWORD}@h:1/x")
    # a redacted URL read back is completed only from the user's own settings
    assert restore(shown, [None, "postgresql://u:other@db:5432/optuna", full]) == full
    assert restore(shown, ["postgresql://u:x@elsewhere/optuna"]) == shown
    # a spec printed, logged or in a traceback shows its URLs redacted; it keeps the full ones to connect
    from autoopt.spec import StudySpec

    spec = StudySpec.from_dict({"name": "s", "task": "cv", "storage": full,
                                "tracking_uri": f"http://u:{PASSWORD}@mlflow:5000", "ray_address": "ray://h:10001"})
    assert PASSWORD not in repr(spec) + str(spec) + json.dumps(spec.to_dict())
    assert spec.storage == full


# --- 5. report folders stay inside --out; a study name cannot inject code into best_config.py ------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["../../escaped", "/tmp/ao-abs-escape", "..", 'x"""; import os; os.system("id") #'])
def test_report_of_a_hostile_study_name_stays_inside_the_reports_folder(tmp_path, name):
    import random

    from test_report import _add_trial

    work = tmp_path / "work"
    work.mkdir()
    url = f"sqlite:///{work / 'autoopt-studies.db'}"
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    study.set_user_attr("autoopt.metric", 'acc"""')
    rng = random.Random(1)
    for _ in range(3):
        _add_trial(study, rng, "complete")
    before = files_in(tmp_path)
    r = autoopt("report", name, "--out", "reports", "--no-log", "--storage", url, cwd=work, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    reports = (work / "reports").resolve()
    written = [Path(line) for line in r.stdout.split() if line.strip()]
    assert written and all(p.resolve().is_relative_to(reports) for p in written), written
    # the storage's own WAL sidecars (autoopt-studies.db-wal/-shm) appear when it is opened
    new = {f for f in files_in(tmp_path) - before if not f.endswith(("-wal", "-shm"))}
    assert new and all(f.startswith("work/reports/") or f == "work/reports" for f in new), new
    assert not Path("/tmp/ao-abs-escape").exists()
    code = next(p for p in written if p.name == "best_config.py").read_text()
    tree = ast.parse(code)
    assert name in ast.get_docstring(tree), "the study name must stay inside the docstring"
    imported = {a.name for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)) for a in node.names}
    assert "os" not in imported and all(not isinstance(n, ast.Expr) for n in tree.body[1:])


# --- 3 + 12. the embedded Ray listens on loopback only; --json stdout survives a dying worker ------
@pytest.fixture(scope="module")
def crashing_run(tmp_path_factory):
    """`autoopt run --json` of a study whose first trial kills its worker once (retried), with the
    listening sockets of every process of the study sampled while it runs."""
    import ray  # noqa: F401 - puts Ray's own psutil (ray/thirdparty_files) on the path

    import psutil

    work = tmp_path_factory.mktemp("crash")
    marker = work / "crashed"
    (work / "crash.yaml").write_text(
        "name: crashjson\ntask: helper_tasks:CrashOnceTask\n"
        f"task_options: {{marker: {marker}, size: 0.25, epochs: 3}}\n"
        "n_trials: 2\nworkers: 1\nretries: 1\npruner: none\ntracking: false\n"
        "space: {optimizers: [adam], schedulers: [constant]}\n"
    )
    ray_tmp = Path(f"/tmp/ao-{uuid.uuid4().hex[:6]}")
    ray_tmp.mkdir()
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "TMPDIR": str(ray_tmp)}
    env.pop("AUTOOPT_STORAGE", None)
    proc = subprocess.Popen([sys.executable, "-m", "autoopt.cli", "run", "crash.yaml", "--json"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    listening: dict[tuple[str, int], str] = {}
    import threading

    out: dict[str, str] = {}
    reader = threading.Thread(target=lambda: out.update(zip(("stdout", "stderr"), proc.communicate(timeout=400))))
    reader.start()
    root = psutil.Process(proc.pid)
    while reader.is_alive():
        try:
            family = [root, *root.children(recursive=True)]
        except psutil.Error:
            break
        for p in family:
            try:
                name = p.name()
                for c in p.net_connections(kind="inet"):
                    if c.status == psutil.CONN_LISTEN:
                        listening[(c.laddr.ip, c.laddr.port)] = name
            except psutil.Error:
                continue
        time.sleep(0.3)
    reader.join()
    import shutil

    shutil.rmtree(ray_tmp, ignore_errors=True)
    return {"returncode": proc.returncode, **out, "listening": listening, "crashed": marker.exists()}


@pytest.mark.slow
def test_embedded_ray_listens_on_loopback_only(crashing_run):
    import ipaddress

    listening = crashing_run["listening"]
    names = set(listening.values())
    assert {"gcs_server", "raylet"} <= names, f"Ray's servers were not seen: {listening}"
    exposed = {addr: name for addr, name in listening.items()
               if not ipaddress.ip_address(addr[0].removeprefix("::ffff:")).is_loopback}
    assert not exposed, f"listening off loopback: {exposed}"


@pytest.mark.slow
def test_json_stdout_is_only_the_json_when_a_worker_dies(crashing_run):
    assert crashing_run["returncode"] == 0, crashing_run["stderr"][-3000:]
    assert crashing_run["crashed"], "the task never killed its worker"
    summary = json.loads(crashing_run["stdout"])  # the whole of stdout: one JSON document
    assert summary["study_name"] == "crashjson" and summary["counts"]["complete"] == 2


# --- 11. bad input: one line, exit 2, nothing created ----------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["run", "spec.yaml", "--storage", "sqlite:////proc/x/x.db"], "cannot create storage sqlite:////proc/x/x.db"),
    (["run", "spec.yaml", "--storage", "journal:///proc/x/x.log"], "cannot create storage journal:///proc/x/x.log"),
    (["ui", "--tracking-uri", "bogus://x"], "unknown scheme 'bogus'"),
    (["recommend", "--task", "cv", "--model", "spec.yaml"], "not a recommender model"),
    (["status", "nosuch"], "no study named 'nosuch'"),
    (["best", "nosuch", "--json"], "no study named 'nosuch'"),
    (["report", "nosuch"], "no storage at"),
    (["resume", "nosuch"], "no storage at"),
    (["sync", "nosuch"], "no storage at"),
])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path, args, needle):
    (tmp_path / "spec.yaml").write_text("name: s\ntask: tabular\nn_trials: 1\n")
    before = files_in(tmp_path)
    r = autoopt(*args, cwd=tmp_path, env={"AUTOOPT_STORAGE": "", "AUTOOPT_TRACKING_URI": ""}, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr + r.stdout and needle in " ".join(r.stderr.split()), r.stderr
    if args[0] != "recommend":  # typer's own usage-error panel for --model; the others are autoopt's one line
        assert [line for line in r.stderr.splitlines() if line.strip()] == [r.stderr.strip()], r.stderr
        assert r.stderr.startswith("error: ")
    assert files_in(tmp_path) == before
