"""The cluster path, tested without Docker: the docker-compose topology as real processes.

One module-scoped :class:`local_cluster.LocalCluster` on 127.0.0.1: two fresh databases on the
machine's PostgreSQL (Optuna storage, MLflow backend store), an ``mlflow server`` process on
PostgreSQL serving artifacts, a Ray head (token authentication on, no CPUs: it only hosts the
study coordinators and the Ray client server) and a separate Ray worker node (``ray start``).
Studies are submitted from subprocesses exactly as from the host of a compose stack: the CLI and
the Python API, with ``AUTOOPT_STORAGE`` / ``AUTOOPT_TRACKING_URI`` / ``AUTOOPT_RAY_ADDRESS``
(``ray://``) and the Ray token in the environment. The pytest process never joins the cluster.

Faults: the worker node is SIGKILLed mid-study, a (private) PostgreSQL is stopped and restarted
mid-study, the MLflow server is stopped and restarted mid-study, and two clients run studies
at the same time. See README "Fault guarantees". Nothing here races the clock: the studies run
``helper_tasks.GatedTask``, which holds each trial until the test hands it a token, so a fault
always lands while known trials are RUNNING and others have finished, however slow the machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from autoopt.core import record as R
from local_cluster import LocalCluster, PrivatePostgres, create_database
from autoopt.storage import open_storage

from conftest import PG_ADMIN

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
AUTOOPT = str(Path(sys.executable).with_name("autoopt"))
TASK = {"size": 0.25, "epochs": 3}
BUDGET_S = 400  # safety cap on the API client's study: it stops once both studies have finished trials
# ranges in which the tiny regression task never diverges (a diverged trial is FAILED by design)
SPACE_A = {"optimizers": ["adamw"], "schedulers": ["constant"], "params": {"adamw": {"lr": {"low": 1e-4, "high": 3e-3}}}}
SPACE_B = {"optimizers": ["radam"], "schedulers": ["constant"], "params": {"radam": {"lr": {"low": 1e-4, "high": 3e-3}}}}
# fast node-death detection on the head (Ray's default is ~30 s)
HEAD_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "1000"}


def _check_prereqs() -> None:
    import sqlalchemy as sa

    from autoopt.storage import sqlalchemy_url

    try:
        engine = sa.create_engine(sqlalchemy_url(PG_ADMIN), connect_args={"connect_timeout": 5})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:  # CI always has it: fail loudly, never skip
        pytest.fail(f"PostgreSQL at {PG_ADMIN} is required for the cluster tests: {exc}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    _check_prereqs()
    c = LocalCluster(tmp_path_factory.mktemp("cluster"), postgres_admin_url=PG_ADMIN, worker_cpus=2,
                     head_env=HEAD_ENV)
    c.start()
    yield c
    c.stop(grace_s=3)  # a throw-away cluster: no need to wait for a graceful Ray shutdown


class Gate:
    """The test's side of ``helper_tasks.GatedTask``: each token lets one held trial through."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(mode=0o777)
        path.chmod(0o777)
        self._n = 0

    def let_through(self, n: int = 1) -> None:
        for _ in range(n):
            (self.path / f"token-{self._n:03d}").touch()
            self._n += 1

    def open(self) -> None:
        (self.path / "open").touch()

    def waiting(self) -> int:
        """Trials waiting at the gate now: started in their worker, not yet let through."""
        return len(list(self.path.glob("held-*")))


def write_spec(path: Path, name: str, n_trials: int | None, workers: int = 1, epochs: int = 3,
               gate: Gate | None = None, **extra: Any) -> Path:
    task, options = ("tabular", {}) if gate is None else ("helper_tasks:GatedTask", {"gate": str(gate.path)})
    spec = {"name": name, "task": task, "task_options": {**TASK, "epochs": epochs, **options}, "n_trials": n_trials,
            "workers": workers, "cpus_per_trial": 1, "pruner": "none", "seed": 0,
            "warm_start": {"enabled": False},
            "space": SPACE_A, **extra}
    path.write_text(yaml.safe_dump(spec))
    return path


def client_env(cluster: LocalCluster, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOOPT_", "RAY_", "MLFLOW_"))}
    env.update(cluster.client_env())  # ray://: the host of a compose stack, outside the cluster
    env["AUTOOPT_RECOMMEND_DIR"] = os.environ["AUTOOPT_RECOMMEND_DIR"]
    env["AUTOOPT_PNG_ENGINE"] = os.environ["AUTOOPT_PNG_ENGINE"]  # conftest: no Chromium per report
    env["AUTOOPT_TRUSTED_TASKS"] = "helper_tasks"  # `resume` imports the stored task path only if trusted
    env["PYTHONFAULTHANDLER"] = "1"  # a client stuck at a test's end shows its threads (_no_client_outlives_its_test)
    env.update(extra)
    return env


#: the CLI clients the running test started (see _no_client_outlives_its_test)
_CLIENTS: list[subprocess.Popen] = []


def start_cli(cluster: LocalCluster, spec: Path, cwd: Path, *args: str, **env: str) -> subprocess.Popen:
    proc = subprocess.Popen([AUTOOPT, "run", str(spec), "--json", *args], cwd=cwd, env=client_env(cluster, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _CLIENTS.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _no_client_outlives_its_test():
    """A test that fails while its client still runs (a wait that timed out) would leave that
    client's Ray session alive, and its queued trials would take the worker nodes the next tests
    start: one failure became five. End such a client; faulthandler (PYTHONFAULTHANDLER, set in
    client_env) prints where each of its threads was on SIGABRT, which the test's report shows."""
    yield
    while _CLIENTS:
        proc = _CLIENTS.pop()
        if proc.poll() is not None:
            continue
        proc.send_signal(signal.SIGABRT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        print(f"client still running at the end of its test, ended: {proc.args}\n{(err or '')[-12000:]}")


def finish(proc: subprocess.Popen, timeout: float = 420) -> tuple[dict[str, Any], str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"client did not finish in {timeout} s:\n{err[-4000:]}")
    assert proc.returncode == 0, f"client failed ({proc.returncode}):\n{err[-4000:]}"
    return json.loads(out.strip().splitlines()[-1]), err


def trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)
    except KeyError:
        return []


def ran(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The trials that ran: not the one a stopped study leaves queued (sampled ahead, WAITING for a resume)."""
    return [t for t in trials(url, name) if t.state != TrialState.WAITING]


def wait_for(what: str, cond, timeout: float, proc: subprocess.Popen | list[subprocess.Popen] | None = None) -> Any:
    """Poll ``cond`` until it returns something true; fail if a watched client exits first."""
    procs = [] if proc is None else proc if isinstance(proc, list) else [proc]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = cond()
        except Exception:  # noqa: BLE001 - the storage may be restarting
            value = None
        if value:
            return value
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"client exited ({p.returncode}) while waiting for {what}:\n{p.stderr.read()[-4000:]}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def held(url: str, name: str, complete: int, running: int, gate: Gate | None = None):
    """A condition for wait_for: exactly these many trials COMPLETE and RUNNING, and with a
    ``gate``, that many waiting at it: RUNNING in storage alone does not say that Ray has started
    the trial on a worker yet (a fault meant for running trials could land before it has)."""
    def cond() -> list[optuna.trial.FrozenTrial] | None:
        ts = trials(url, name)
        states = [t.state for t in ts]
        if states.count(TrialState.COMPLETE) == complete and states.count(TrialState.RUNNING) == running:
            if gate is None or gate.waiting() >= running:
                return ts
        return None
    return cond


API_SCRIPT = """
import json, os, sys, time
import optuna
import autoopt
from autoopt.storage import open_storage
spec = autoopt.StudySpec(name=sys.argv[1], task="tabular", task_options={task!r}, n_trials=None,
                         timeout_s={budget}, workers=1,
                         cpus_per_trial=1, pruner="none", seed=1, warm_start={{"enabled": False}},
                         space={space!r})
handle = autoopt.submit(spec)          # storage, tracking and Ray from AUTOOPT_* in the environment
# run until this study and the other client's ({other!r}) have each finished {until} trials, then
# stop gently (running trials finish)
storage = open_storage(os.environ["AUTOOPT_STORAGE"])

def complete(name):
    try:
        ts = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return 0
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in ts)

while not handle.done():
    if complete({other!r}) >= {until} and complete(sys.argv[1]) >= {until}:
        handle.stop()
        break
    time.sleep(0.5)
result = handle.wait()
print(json.dumps(result.to_dict(), default=str))
"""


# ------------------------------------------------------------------------------------------------
# Two clients, CLI and Python API, at the same time
# ------------------------------------------------------------------------------------------------
CLIENT_EPOCHS = 5


@pytest.fixture(scope="module")
def two_clients(cluster, tmp_path_factory):
    """Submit one study with the Python API and one with the CLI, at the same time, from "the host"."""
    work = tmp_path_factory.mktemp("clients")
    gate = Gate(work / "gate")  # the CLI's trials wait until the API's study has finished one
    api = subprocess.Popen([sys.executable, "-c", API_SCRIPT.format(
        task={**TASK, "epochs": CLIENT_EPOCHS}, budget=BUDGET_S, space=SPACE_B, other="cli-study", until=2),
        "api-study"], cwd=work, env=client_env(cluster), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cli = start_cli(cluster, write_spec(work / "cli.yaml", "cli-study", 4, epochs=CLIENT_EPOCHS, gate=gate), work)
    # both studies are under way at once, however long each client took to connect
    wait_for("both studies under way", lambda: (
        any(t.state == TrialState.COMPLETE for t in trials(cluster.optuna_url, "api-study"))
        and any(t.state == TrialState.RUNNING for t in trials(cluster.optuna_url, "cli-study"))), 240, [api, cli])
    gate.open()
    cli_result, _ = finish(cli)
    api_result, _ = finish(api)
    return {"cli-study": cli_result, "api-study": api_result, "workdir": work}


def test_trials_ran_on_the_worker_node(cluster, two_clients):
    worker_ids = {w.node_id for w in cluster.workers}
    assert None not in worker_ids
    for name in ("cli-study", "api-study"):
        ts = ran(cluster.optuna_url, name)
        assert len(ts) >= 2
        nodes = {t.user_attrs.get(R.NODE_ID) for t in ts}
        assert nodes <= worker_ids, f"{name}: trials ran on {nodes}, worker nodes are {worker_ids}"
        assert cluster.head.node_id not in nodes


def test_storage_is_the_clusters_postgresql(cluster, two_clients):
    assert make_url(cluster.optuna_url).get_backend_name() == "postgresql"
    for name in ("cli-study", "api-study"):
        result = two_clients[name]
        assert result["counts"]["complete"] == len(ran(cluster.optuna_url, name)) >= 2, result
        assert make_url(result["storage_url"]).get_backend_name() == "postgresql"
        assert result["storage_url"].rsplit("/", 1)[-1] == cluster.optuna_url.rsplit("/", 1)[-1]
    # nothing was written next to the client
    assert not list(two_clients["workdir"].glob("*.db")) and not (two_clients["workdir"] / "mlartifacts").exists()


def test_runs_are_on_the_tracking_server(cluster, two_clients):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=cluster.mlflow.url)
    for name in ("cli-study", "api-study"):
        result = two_clients[name]
        assert result["tracking_uri"] == cluster.mlflow.url
        exp = client.get_experiment_by_name(name)
        assert exp is not None
        runs = client.search_runs([exp.experiment_id])
        parent = [r for r in runs if r.info.run_id == result["mlflow_parent_run_id"]]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result["mlflow_parent_run_id"]]
        assert len(parent) == 1 and parent[0].info.status == "FINISHED"
        assert len(children) == len(ran(cluster.optuna_url, name))
        assert all(r.info.status == "FINISHED" for r in children)
        by_id = {t.user_attrs[R.MLFLOW_RUN_ID]: t for t in ran(cluster.optuna_url, name)}
        assert set(by_id) == {r.info.run_id for r in children}
        for r in children:
            history = client.get_metric_history(r.info.run_id, "val_mse")
            assert len(history) == CLIENT_EPOCHS
        # artifacts went through the server (mlflow-artifacts:/), onto the server's volume
        assert client.list_artifacts(result["mlflow_parent_run_id"])


def test_concurrent_studies_do_not_interfere(cluster, two_clients):
    a, b = ran(cluster.optuna_url, "cli-study"), ran(cluster.optuna_url, "api-study")
    assert [t.number for t in a] == list(range(len(a))) and [t.number for t in b] == list(range(len(b)))
    assert all(t.state == TrialState.COMPLETE for t in a + b)
    assert {t.params["optimizer"] for t in a} == {"adamw"} and {t.params["optimizer"] for t in b} == {"radam"}
    assert len({t.user_attrs[R.SESSION] for t in a}) == 1
    assert {t.user_attrs[R.SESSION] for t in a}.isdisjoint({t.user_attrs[R.SESSION] for t in b})
    study_b = optuna.load_study(study_name="api-study", storage=open_storage(cluster.optuna_url))
    assert study_b.user_attrs[R.SPEC]["space"]["optimizers"] == ["radam"]
    # the two studies overlapped in time (else this proves nothing about concurrency)
    span = lambda ts: (min(t.datetime_start for t in ts), max(t.datetime_complete for t in ts))  # noqa: E731
    (a0, a1), (b0, b1) = span(a), span(b)
    assert a0 < b1 and b0 < a1, f"no overlap: cli-study ran {a0:%X}-{a1:%X}, api-study {b0:%X}-{b1:%X}"


def http(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_uis_answer_as_in_compose(cluster, two_clients):
    """The three UIs of the README: MLflow, Ray dashboard (token auth on), optuna-dashboard on the
    same PostgreSQL storage, started with the URL form docker-compose.yml gives it."""
    from local_cluster import free_port, port_open
    from autoopt.storage import sqlalchemy_url

    status, body = http(cluster.mlflow.url + "/")
    assert status == 200 and b"<html" in body.lower()

    dash = cluster.head.dashboard_url
    assert http(dash + "/api/gcs_healthz")[0] == 200  # compose's healthcheck, no token needed
    assert json.loads(http(dash + "/api/authentication_mode")[1])["authentication_mode"] == "token"
    assert http(dash + "/nodes?view=summary")[0] == 401
    status, body = http(dash + "/nodes?view=summary", {"Authorization": f"Bearer {cluster.token}"})
    assert status == 200 and json.loads(body)["result"] is True

    port = free_port()
    url = sqlalchemy_url(cluster.optuna_url)
    assert url.startswith("postgresql+psycopg://")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("optuna-dashboard")), url,
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("optuna-dashboard", lambda: port_open(port), 60, proc)
        studies = json.loads(http(f"http://127.0.0.1:{port}/api/studies")[1])["study_summaries"]
    finally:
        proc.terminate()
        proc.wait(10)
    assert {"cli-study", "api-study"} <= {s["study_name"] for s in studies}


# ------------------------------------------------------------------------------------------------
# Faults
# ------------------------------------------------------------------------------------------------
def test_ray_refuses_a_client_without_the_token(cluster):
    """The Ray client port (what ``ray://`` connects to) and the GCS of the compose topology answer
    a gRPC call without the token, or with a wrong one, with UNAUTHENTICATED; with the cluster's
    token the same call is answered. (A ``ray.init`` without the token only reports a connection
    timeout after 30 s: the gRPC status says why.)"""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc, ray_client_pb2, ray_client_pb2_grpc

    def call(service: str, address: str, token: str | None) -> grpc.StatusCode:
        metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            try:
                if service == "client":
                    ray_client_pb2_grpc.RayletDriverStub(channel).ClusterInfo(
                        ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING),
                        timeout=30, metadata=metadata)
                else:
                    gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetAllNodeInfo(
                        gcs_service_pb2.GetAllNodeInfoRequest(), timeout=30, metadata=metadata)
            except grpc.RpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    head = cluster.head
    for service, address in (("client", head.client_address.removeprefix("ray://")), ("gcs", head.gcs_address)):
        assert call(service, address, None) == grpc.StatusCode.UNAUTHENTICATED, service
        assert call(service, address, "not-" + cluster.token) == grpc.StatusCode.UNAUTHENTICATED, service
        assert call(service, address, cluster.token) == grpc.StatusCode.OK, service


def test_a_reused_pid_is_not_taken_for_a_dead_service(tmp_path):
    """Ray starts processes by the thousand and pid_max may be 32768: once a service's processes
    are gone its pid can name a stranger, which stop()/kill() must then leave alone."""
    from local_cluster import Service, session_pids

    svc = Service("sleeper", tmp_path / "sleeper.log")
    svc.spawn(["sleep", "60"])
    try:
        assert svc.pids() == [svc.proc.pid]
        assert session_pids(svc.proc.pid, svc.start_ticks) == [svc.proc.pid]
        # the same pid with another start time is another process (a new session leader): not ours
        assert session_pids(svc.proc.pid, svc.start_ticks + 1) == []
    finally:
        svc.proc.kill()
        svc.proc.wait()
    assert Service("never", tmp_path / "n.log").pids() == []


@pytest.fixture
def live_worker(cluster):
    """A running worker node (an earlier fault test may have left none)."""
    alive = [w for w in cluster.workers if w.alive]
    return alive[-1] if alive else cluster.add_worker()


def actors(cluster: LocalCluster, class_name: str) -> list[dict[str, Any]]:
    """Actors of the cluster, from the dashboard's state API (with the token)."""
    status, body = http(cluster.head.dashboard_url + "/api/v0/actors?detail=1&limit=1000",
                        {"Authorization": f"Bearer {cluster.token}"})
    assert status == 200, body[:500]
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == class_name:
                found.append(node)
            else:
                for v in node.values():
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(body))
    return found


def test_worker_node_killed_mid_study(cluster, live_worker, tmp_path):
    """SIGKILL the only worker node while trials run: those trials are FAILED with the reason and
    re-enqueued; the study waits, and completes on a new worker node; finished trials stay."""
    url = cluster.optuna_url
    gate = Gate(tmp_path / "gate")
    gate.let_through(1)  # one trial completes; the next two are held RUNNING on the node
    proc = start_cli(cluster, write_spec(tmp_path / "kill.yaml", "kill-study", 6, workers=2, retries=1, gate=gate),
                     tmp_path)
    before = wait_for("one finished and two running trials", held(url, "kill-study", 1, 2, gate), 240, proc)
    # the study's coordinator (its storage owner) lives on the head, not on the node about to die
    coordinators = [a for a in actors(cluster, "StudyCoordinator") if a.get("state") == "ALIVE"]
    assert coordinators and all(a["node_id"] == cluster.head.node_id for a in coordinators), (
        [(a["node_id"], a.get("job_id")) for a in coordinators], "head", cluster.head.node_id,
        "workers", [w.node_id for w in cluster.workers])

    done_before = {t.number: t.value for t in before if t.state == TrialState.COMPLETE}
    running = {t.number for t in before if t.state == TrialState.RUNNING}
    victim = live_worker
    victim_id = victim.node_id  # read from its raylet's arguments: gone with the kill
    victim.kill()
    wait_for("the node's processes to be gone", lambda: not victim.pids(), 10)
    def all_failed() -> list[optuna.trial.FrozenTrial] | None:
        failed = [t for t in trials(url, "kill-study") if t.state == TrialState.FAIL]
        return failed if {t.number for t in failed} == running else None

    try:
        failed = wait_for("the killed trials to be failed", all_failed, 120, proc)
    except pytest.fail.Exception as exc:  # what the driver's lost-node check had to go on (a rare flake)
        status, body = http(cluster.head.dashboard_url + "/api/v0/nodes?detail=1&limit=100",
                            {"Authorization": f"Bearer {cluster.token}"})
        story = [(t.number, t.state.name, t.user_attrs.get(R.NODE_ID), t.user_attrs.get(R.REASON))
                 for t in trials(url, "kill-study")]
        pytest.fail(f"{exc}\nkilled node {victim_id}; trials {story}\nnodes ({status}): {body[:3000]}")
    gate.open()
    new = cluster.add_worker()
    result, _ = finish(proc)

    final = trials(url, "kill-study")
    for number, value in done_before.items():  # nothing already finished is lost
        assert final[number].state == TrialState.COMPLETE and final[number].value == value
    story = [(t.number, t.state.name, t.user_attrs.get(R.REASON), t.user_attrs.get(R.RETRY_OF))
             for t in final]
    assert {t.number for t in final if t.state == TrialState.FAIL} == running, story
    for t in failed:
        assert t.user_attrs[R.REASON].startswith("worker lost"), story
        assert t.user_attrs[R.RETRIED] is True, story
    retries = [t for t in final if R.RETRY_OF in t.user_attrs]
    assert sorted(t.user_attrs[R.RETRY_OF] for t in retries) == sorted(running), story
    assert all(t.state == TrialState.COMPLETE for t in retries), story
    assert {t.user_attrs[R.NODE_ID] for t in retries} == {new.node_id}
    counted = [t for t in final if not t.user_attrs.get(R.RETRIED)]
    assert len(counted) == 6 and all(t.state == TrialState.COMPLETE for t in counted)
    assert result["counts"]["complete"] == 6


@pytest.fixture
def private_pg(tmp_path):
    why = PrivatePostgres.available()
    if why:
        pytest.fail(f"the PostgreSQL restart test needs a private server: {why}")
    import tempfile

    # as root the server runs as `postgres`, which cannot enter pytest's 0700 tmp_path
    pg = PrivatePostgres(Path(tempfile.mkdtemp(prefix="ao-pg-", dir="/tmp"))).init()
    pg.start()
    yield pg
    pg.destroy()


def test_postgres_restart_mid_study(cluster, live_worker, private_pg, tmp_path):
    """Stop the study's PostgreSQL (a private one: never the machine's) for 8 s while trials run,
    then start it again: the coordinator retries, the study completes, nothing is lost."""
    url = create_database(private_pg.url, "autoopt_restart")
    gate = Gate(tmp_path / "gate")
    gate.let_through(1)
    proc = start_cli(cluster, write_spec(tmp_path / "pg.yaml", "pg-study", 6, workers=2, gate=gate), tmp_path,
                     "--storage", url)

    before = wait_for("one finished and two running trials", held(url, "pg-study", 1, 2, gate), 240, proc)
    done_before = {t.number: t.value for t in before if t.state == TrialState.COMPLETE}
    private_pg.stop("fast")  # ends every session: the coordinator's pooled connections die
    gate.open()  # the held trials finish their epochs and report while the database is down
    time.sleep(8)
    if proc.poll() is not None:
        err = proc.stderr.read()
        (tmp_path / "client.err").write_text(err)
        pytest.fail(f"the client died while PostgreSQL was down:\n{err[:6000]}")
    private_pg.start()
    result, err = finish(proc)

    final = trials(url, "pg-study")
    for number, value in done_before.items():
        assert final[number].state == TrialState.COMPLETE and final[number].value == value
    counted = [t for t in final if not t.user_attrs.get(R.RETRIED)]
    assert len(counted) == 6 and all(t.state == TrialState.COMPLETE for t in counted), [
        (t.number, t.state, t.user_attrs.get(R.REASON)) for t in final]
    assert result["counts"]["complete"] == 6
    assert "was unreachable during the study" in err  # the outage really hit the study; the user is told


def test_postgres_down_too_long_fails_clearly_then_resumes(cluster, live_worker, private_pg, tmp_path):
    """PostgreSQL stays down longer than AUTOOPT_STORAGE_RETRY_S (5 s here): the client stops with
    one line naming the storage (no password, no traceback) and exit code 2; once PostgreSQL is
    back, `autoopt resume` fails the dead run's RUNNING trials, re-runs them and completes."""
    url = create_database(private_pg.url, "autoopt_outage")
    gate = Gate(tmp_path / "gate")
    gate.let_through(1)
    proc = start_cli(cluster, write_spec(tmp_path / "out.yaml", "outage-study", 4, workers=2, gate=gate), tmp_path,
                     "--storage", url, AUTOOPT_STORAGE_RETRY_S="5")
    before = wait_for("one finished and two running trials", held(url, "outage-study", 1, 2, gate), 240, proc)
    private_pg.stop("fast")
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the client kept waiting for a storage that stayed down")
    assert proc.returncode == 2, err[-3000:]
    message = [line for line in err.splitlines() if "error:" in line]
    assert len(message) == 1 and "Traceback" not in err, err[-3000:]
    assert f"127.0.0.1:{private_pg.port}/autoopt_outage unreachable for 5 s" in message[0]
    assert "autoopt resume outage-study" in message[0]

    private_pg.start()
    gate.open()
    done_before = {t.number: t.value for t in before if t.state == TrialState.COMPLETE}
    orphans = {t.number for t in trials(url, "outage-study") if t.state == TrialState.RUNNING}
    running_before = {t.number for t in before if t.state == TrialState.RUNNING}
    # the coordinator samples the next trial ahead (RUNNING from Optuna's ask, then WAITING with its
    # params in one more write): an outage between the two leaves that trial RUNNING too, with no
    # worker; the resume below must reap it like the others (seen once in three runs by hand)
    ahead = {t.number for t in before if t.state == TrialState.WAITING} | {len(before)}
    assert running_before <= orphans <= running_before | ahead, (orphans, running_before)
    resume = subprocess.Popen([AUTOOPT, "resume", "outage-study", "--storage", url, "--json"], cwd=tmp_path,
                              env=client_env(cluster, AUTOOPT_STALE_AFTER_S="2"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _CLIENTS.append(resume)
    result, _ = finish(resume)
    final = trials(url, "outage-study")
    for number, value in done_before.items():
        assert final[number].state == TrialState.COMPLETE and final[number].value == value
    for number in orphans:
        assert final[number].state == TrialState.FAIL and final[number].user_attrs[R.RETRIED] is True
        assert final[number].user_attrs[R.REASON].startswith("abandoned")
    counted = [t for t in final if not t.user_attrs.get(R.RETRIED)]
    assert len(counted) == 4 and all(t.state == TrialState.COMPLETE for t in counted)
    assert result["counts"]["complete"] == 4


def test_mlflow_server_down_mid_study(cluster, live_worker, tmp_path):
    """Stop the MLflow server while trials run: they go on and land in Optuna; the user is warned;
    once the server is back (same port), later trials and the study's results are logged."""
    from mlflow import MlflowClient

    from local_cluster import start_mlflow_server

    url = cluster.optuna_url
    gate = Gate(tmp_path / "gate")
    gate.let_through(1)
    proc = start_cli(cluster, write_spec(tmp_path / "ml.yaml", "mlflow-study", 4, workers=1, gate=gate), tmp_path,
                     AUTOOPT_TRACKING_COOLDOWN_S="2")
    wait_for("a finished trial and a held one", held(url, "mlflow-study", 1, 1, gate), 240, proc)
    server = cluster.mlflow
    down_at = time.time()
    server.kill()  # the server process dies (SIGKILL): connections refused from now on
    gate.let_through(1)  # a trial finishes (it must log its epochs and end its run) while the server is down
    during = wait_for("a trial finished during the outage", held(url, "mlflow-study", 2, 1), 240, proc)
    assert max(t.datetime_complete.timestamp() for t in during if t.state == TrialState.COMPLETE) > down_at
    assert proc.poll() is None
    cluster.mlflow = start_mlflow_server(cluster.mlflow_backend_uri, cluster.workdir / "mlartifacts",
                                         cluster.workdir / "mlflow-2.log", port=server.port)
    up_at = time.time()
    time.sleep(3)  # past the workers' tracking cooldown (2 s here)
    gate.open()  # the held trial finishes; the last one starts now that the server is back
    result, err = finish(proc)

    final = trials(url, "mlflow-study")
    assert result["counts"]["complete"] == len(final) and all(t.state == TrialState.COMPLETE for t in final)
    assert "MLflow tracking at" in err and "failed during trial" in err, err[-3000:]
    client = MlflowClient(tracking_uri=cluster.mlflow.url)
    exp = client.get_experiment_by_name("mlflow-study")
    parent = client.get_run(result["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and "best_value" in parent.data.metrics, err[-3000:]  # logged after
    children = {r.info.run_id: r for r in client.search_runs([exp.experiment_id])
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    after = [t for t in final if t.datetime_start.timestamp() > up_at + 2]  # started once the server was back
    assert after, "no trial started after the server came back"
    for t in after:
        run = children[t.user_attrs[R.MLFLOW_RUN_ID]]
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "val_mse")) == 3


# ------------------------------------------------------------------------------------------------
# A study submitted as a Ray job: it outlives the submitting process and runs the shipped module
# ------------------------------------------------------------------------------------------------
SHIPPED_OBJECTIVE = '''
import os

import autoopt

VALUE = {value!r}


def objective(trial: autoopt.Trial) -> float:
    here = os.path.dirname(os.path.abspath(__file__))
    if "_ray_pkg_" not in here:  # this module exists nowhere but in the job's shipped working directory
        raise RuntimeError(f"not the module shipped with the job: {{here}}")
    for step in (1, 2):
        trial.report(VALUE - 0.1 / step, step=step)
    return VALUE
'''


def jobs_cli(cluster: LocalCluster, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = client_env(cluster, AUTOOPT_JOBS_ADDRESS=cluster.head.dashboard_url, AUTOOPT_JOB_PYTHON=sys.executable)
    return subprocess.run([AUTOOPT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_submitted_study_outlives_the_client_and_runs_the_shipped_module(cluster, tmp_path):
    import uuid

    project = tmp_path / "project"
    project.mkdir()
    module = f"shipped_{uuid.uuid4().hex[:8]}"  # on no machine's path: only the job can bring it
    (project / f"{module}.py").write_text(SHIPPED_OBJECTIVE.format(value=0.4242))
    (project / "study.yaml").write_text(yaml.safe_dump({
        "name": "submitted", "objective": f"{module}:objective", "metric": "score", "direction": "maximize",
        "max_reports": 2, "n_trials": 3, "workers": 1, "cpus_per_trial": 1, "pruner": "none",
        "space": SPACE_A}))
    submitted = jobs_cli(cluster, project, "run", "study.yaml", "--submit", "--json")
    # the submitting process has exited: everything from here on runs on the cluster alone
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job = json.loads(submitted.stdout.strip().splitlines()[-1])
    assert job["study_name"] == "submitted" and job["job_id"].startswith("autoopt-submitted-")

    def finished() -> dict[str, Any] | None:
        out = jobs_cli(cluster, project, "status", "submitted", "--json")
        data = json.loads(out.stdout) if out.returncode == 0 else {}
        return data if data.get("job", {}).get("status") in ("SUCCEEDED", "FAILED", "STOPPED") else None

    status = wait_for("the submitted study's job to end", finished, 300)
    logs = jobs_cli(cluster, project, "logs", "submitted").stdout
    assert status["job"]["status"] == "SUCCEEDED", logs[-3000:]
    assert status["counts"]["complete"] == 3 and status["best_value"] == 0.4242
    ts = trials(cluster.optuna_url, "submitted")
    assert [t.state for t in ts] == [TrialState.COMPLETE] * 3, [t.user_attrs.get(R.REASON) for t in ts]
    worker_nodes = {w.node_id for w in cluster.workers}
    assert {t.user_attrs[R.NODE_ID] for t in ts} <= worker_nodes  # trials ran on the worker node
    assert '"study_name": "submitted"' in logs  # the driver's --json summary, read back through the job API
    # stop works against a running job
    (project / "study.yaml").write_text(yaml.safe_dump({
        "name": "stopped", "objective": "helper_objectives:objective", "metric": "val_acc", "direction": "maximize",
        "n_trials": 50, "workers": 1, "cpus_per_trial": 1, "pruner": "none", "space": SPACE_A}))
    assert jobs_cli(cluster, project, "run", "study.yaml", "--submit").returncode == 0
    wait_for("a trial of the second job", lambda: trials(cluster.optuna_url, "stopped"), 240)
    stopped = jobs_cli(cluster, project, "stop", "stopped", "--json")
    assert stopped.returncode == 0 and json.loads(stopped.stdout)["stopped"] is True
    wait_for("the second job to stop", lambda: json.loads(jobs_cli(cluster, project, "status", "stopped", "--json").stdout)
             ["job"]["status"] == "STOPPED", 120)
    stopped_trials = trials(cluster.optuna_url, "stopped")
    assert len(stopped_trials) < 50
    # the driver ended as on Ctrl-C: the trial in flight is recorded (and re-enqueued for a resume), not left RUNNING
    assert TrialState.RUNNING not in {t.state for t in stopped_trials}, [(t.number, t.state) for t in stopped_trials]
    assert any(t.user_attrs.get(R.REASON) == "interrupted: the study was stopped" for t in stopped_trials)
