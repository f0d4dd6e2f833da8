"""Test harness: the docker-compose topology as plain processes on one machine (and a free local port).

``docker-compose.yml`` runs PostgreSQL, an MLflow tracking server on it, a Ray head (no CPUs:
it only hosts the study coordinators and the Ray client server) and Ray worker nodes that run
the trials. The classes here start the same parts as processes, with the same settings (Ray
token authentication on, artifacts served by the MLflow server). The integration tests
(``tests/test_cluster.py``) run on them because CI machines have no Docker engine; they are also
a way to try the cluster path without Docker (from the repository root, ``PYTHONPATH=tests``)::

    cluster = LocalCluster(workdir, postgres_admin_url="postgresql://postgres@127.0.0.1/postgres")
    cluster.start()
    env = cluster.client_env()     # AUTOOPT_STORAGE, AUTOOPT_TRACKING_URI, AUTOOPT_RAY_ADDRESS, RAY_AUTH_*
    ...                            # autoopt run studies/quickstart.yaml, with env
    cluster.stop()

Each process starts in a session of its own and is stopped by signalling exactly the processes
of that session. ``ray stop`` is never used: it stops every Ray instance on the machine.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The variables a client (host or container) needs to submit a study to the cluster.
CLIENT_ENV = ("AUTOOPT_STORAGE", "AUTOOPT_TRACKING_URI", "AUTOOPT_RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")


#: ``mlflow server --allowed-hosts`` of docker-compose.yml: the service name and this machine.
MLFLOW_ALLOWED_HOSTS = "mlflow,mlflow:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*"


#: Head settings of docker-compose.yml's ``ray-head`` service beyond token authentication: Ray's
#: client proxy sometimes loses a per-client server to a gRPC fork race (ray#63202), which gRPC's
#: fork handlers cause (off here, as in compose); if it happens anyway the client retries, and
#: learns of the loss after this many seconds instead of 30.
HEAD_ENV = {"GRPC_ENABLE_FORK_SUPPORT": "false", "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "10"}


class ClusterError(RuntimeError):
    """A part of the local cluster did not start; the message ends with the tail of its log."""


#: ports for the tests' servers: above Ray's worker ports (10002-19999) and below the kernel's
#: ephemeral range (32768 and up here), from which every bind(0) and outgoing connection (Ray's
#: gRPC servers, other tests' clients) takes its port
_TEST_PORTS = (20000, 32768)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing is bound to, for a server a test starts. Not one the kernel hands out for
    bind(0): between this check and the server's own bind, such a port went to a Ray worker or a
    connection of another test process (an MLflow server then failed with 'address already in
    use'); outside that range only another test's free_port can pick it, rarely, and not an
    already bound one."""
    import random

    low, high = _TEST_PORTS[0], min(_TEST_PORTS[1], _ephemeral_low())
    for port in random.SystemRandom().sample(range(low, high), 200) if high - low > 200 else ():
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # no room below the ephemeral range on this machine
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def ray_env(token: str) -> dict[str, str]:
    """Environment for every Ray process and client of a token-authenticated cluster."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}


def _stat(pid: int | str) -> tuple[int, int, int] | None:
    """(ppid, session, start time in clock ticks) of a live process, None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid pgrp session ... starttime(22nd): comm may contain spaces, so split after ')'
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) <= 19 or fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[3]), int(fields[19])


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, session, start time in clock ticks) of every live process."""
    table: dict[int, tuple[int, int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(entry.name)) is not None:
            table[int(entry.name)] = stat
    return table


def session_pids(sid: int, start_ticks: int | None = None) -> list[int]:
    """Processes of the service started as ``sid``: those in its session, and every descendant of
    it (Ray's raylet starts its worker processes in sessions of their own).

    Linux reuses a pid once nothing holds it (here pid_max may be only 32768, and a Ray cluster
    starts processes by the thousand): if ``sid`` now names a process that started at another
    time than ``start_ticks``, the service's session is gone and the pid belongs to a stranger.
    """
    table = _proc_table()
    if start_ticks is not None and sid in table and table[sid][2] != start_ticks:
        return []
    found = {pid for pid, (_, session, _) in table.items() if session == sid}
    if sid in table:
        found.add(sid)
    grew = True
    while grew:
        new = {pid for pid, (ppid, _, _) in table.items() if ppid in found and pid not in found}
        found |= new
        grew = bool(new)
    return sorted(found)


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@dataclass
class Service:
    """One long-running process in its own session, logging to ``log``."""

    name: str
    log: Path
    proc: subprocess.Popen | None = None
    start_ticks: int | None = field(default=None, repr=False)  # the leader's start time, set by spawn

    def spawn(self, cmd: list[str], env: dict[str, str] | None = None, cwd: str | Path | None = None) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
            )
        stat = _stat(self.proc.pid)
        self.start_ticks = stat[2] if stat else None  # tells our session leader from a later one

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        if self.proc is None:
            return []
        return session_pids(self.proc.pid, self.start_ticks)

    def _signal_all(self, sig: int) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL every process of the service at once: a machine that lost power."""
        if self.proc is None:
            return
        for _ in range(20):  # again, for any child forked between listing and signalling
            self._signal_all(signal.SIGKILL)
            self.proc.wait()
            time.sleep(0.05)
            if not self.pids():
                break

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL whatever of the session is left after ``timeout`` seconds."""
        if self.proc is None:
            return
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        self._signal_all(signal.SIGKILL)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL always ends it
            pass

    def wait_until(self, ready: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ClusterError(f"{self.name} exited with code {self.proc.returncode}:\n{_tail(self.log)}")
            if ready():
                return
            time.sleep(0.3)
        raise ClusterError(f"{self.name}: {what} not ready within {timeout:.0f} s:\n{_tail(self.log)}")


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _ray_temp_dir(name: str) -> Path:
    """A short directory for Ray's session files: its Unix sockets must fit in 107 bytes, which a
    pytest tmp_path (or any deep working directory) does not leave room for."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"ao-{name}-", dir="/tmp" if Path("/tmp").is_dir() else None))


@dataclass
class RayNode(Service):
    """A Ray node started with ``ray start --block``; ``node_id`` is read from its raylet."""

    env: dict[str, str] = field(default_factory=dict)
    temp_dir: Path | None = None

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self._remove_temp_dir()

    def _remove_temp_dir(self) -> None:
        if self.temp_dir is not None and not self.pids():
            # keep the node's logs next to the service log, then drop the session files
            logs = self.temp_dir / "session_latest" / "logs"
            if logs.is_dir():
                shutil.copytree(logs, self.log.with_suffix(""), dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("*.sock", "events", "export_events", "old"))
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    @property
    def node_id(self) -> str | None:
        for pid in self.pids():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            for arg in cmd:
                if arg.startswith(b"--node_id="):
                    return arg.split(b"=", 1)[1].decode()
        return None

    def _wait_started(self, timeout: float) -> None:
        self.wait_until(lambda: b"Ray runtime started" in self.log.read_bytes() and self.node_id is not None,
                        timeout, "node")


def _agent_ports() -> list[str]:
    # Ray's defaults (dashboard agent 52365, ...) collide when several nodes share a machine.
    return [f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}"]


def start_ray_head(temp_dir: Path, token: str, *, num_cpus: int = 0, dashboard: bool = True,
                   object_store_bytes: int = 100_000_000, extra_env: dict[str, str] | None = None,
                   timeout: float = 90.0) -> "RayHead":
    """A head node like the compose ``ray-head`` service: GCS, Ray client server, dashboard, no CPUs."""
    head = RayHead(name="ray-head", log=temp_dir / "ray-head.log", gcs_port=free_port(),
                   client_port=free_port(), dashboard_port=free_port() if dashboard else None,
                   env={**ray_env(token), **HEAD_ENV, **(extra_env or {})}, temp_dir=_ray_temp_dir("head"))
    cmd = [_ray_bin(), "start", "--head", "--block", f"--port={head.gcs_port}", "--node-ip-address=127.0.0.1",
           f"--num-cpus={num_cpus}", "--num-gpus=0", f"--ray-client-server-port={head.client_port}",
           f"--temp-dir={head.temp_dir}", f"--object-store-memory={object_store_bytes}",
           "--disable-usage-stats", *_agent_ports()]
    if dashboard:
        cmd += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={head.dashboard_port}"]
    else:
        cmd += ["--include-dashboard=false"]
    head.spawn(cmd, env=head.env)
    try:
        head._wait_started(timeout)
        head.wait_until(lambda: port_open(head.client_port), timeout, "Ray client server")
        if dashboard:
            head.wait_until(lambda: port_open(head.dashboard_port), timeout, "dashboard")
    except BaseException:
        head.stop()
        raise
    return head


@dataclass
class RayHead(RayNode):
    gcs_port: int = 0
    client_port: int = 0
    dashboard_port: int | None = None

    @property
    def gcs_address(self) -> str:
        """For ``ray start --address`` and drivers on a cluster node."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def client_address(self) -> str:
        """For drivers outside the cluster (the host of a compose stack): Ray client."""
        return f"ray://127.0.0.1:{self.client_port}"

    @property
    def dashboard_url(self) -> str | None:
        return f"http://127.0.0.1:{self.dashboard_port}" if self.dashboard_port else None


def start_ray_worker(head: RayHead, temp_dir: Path, name: str = "ray-worker", *, num_cpus: int = 2,
                     num_gpus: int = 0, resources: dict[str, float] | None = None,
                     object_store_bytes: int = 100_000_000, timeout: float = 90.0) -> RayNode:
    """A worker node like the compose ``ray-worker`` service (one per GPU machine/container)."""
    import json

    node = RayNode(name=name, log=temp_dir / f"{name}.log", env=dict(head.env), temp_dir=_ray_temp_dir(name))
    cmd = [_ray_bin(), "start", "--block", f"--address={head.gcs_address}", "--node-ip-address=127.0.0.1",
           f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}", f"--temp-dir={node.temp_dir}",
           f"--object-store-memory={object_store_bytes}", "--disable-usage-stats", *_agent_ports()]
    if resources:
        cmd.append(f"--resources={json.dumps(resources)}")
    node.spawn(cmd, env=node.env)
    try:
        node._wait_started(timeout)
    except BaseException:
        node.stop()
        raise
    return node


@dataclass
class MlflowServer(Service):
    """``mlflow server`` on a SQL backend, serving artifacts itself (clients need no shared disk)."""

    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False


def start_mlflow_server(backend_uri: str, artifacts_dir: Path, log: Path, *, port: int | None = None,
                        wait: bool = True, timeout: float = 180.0) -> MlflowServer:
    """Start the tracking server; a fresh PostgreSQL database takes ~25 s of migrations."""
    server = MlflowServer(name="mlflow", log=log, port=port or free_port())
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
           "--serve-artifacts", "--artifacts-destination", str(artifacts_dir),
           "--host", "127.0.0.1", "--port", str(server.port), "--workers", "1",
           # the Host headers docker-compose.yml's mlflow service accepts
           "--allowed-hosts", MLFLOW_ALLOWED_HOSTS]
    # The GenAI job runner (judges, prompt optimisation) is not used by autoopt: 5 fewer processes.
    server.spawn(cmd, env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    if wait:
        try:
            server.wait_until(server.healthy, timeout, "/health")
        except BaseException:
            server.stop()
            raise
    return server


def create_database(admin_url: str, name: str) -> str:
    """CREATE DATABASE ``name`` on the server of ``admin_url``; returns the new database's URL."""
    import sqlalchemy as sa

    from autoopt.storage import sqlalchemy_url

    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"database name {name!r}: use lowercase letters, digits and '_'")
    engine = sa.create_engine(sqlalchemy_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(admin_url: str, name: str) -> None:
    import sqlalchemy as sa

    from autoopt.storage import sqlalchemy_url

    engine = sa.create_engine(sqlalchemy_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            c.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    finally:
        engine.dispose()


def _pg_bin(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"), key=lambda p: p.parts[-3])
    return str(versions[-1]) if versions else None


class PrivatePostgres:
    """A PostgreSQL server of our own (initdb into a temp dir), to stop and restart at will.

    Needs ``initdb``/``pg_ctl`` (Debian: /usr/lib/postgresql/<v>/bin). PostgreSQL refuses to run
    as root, so as root the server runs as the ``postgres`` user (via ``runuser``).
    """

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.data = self.root / "data"
        self.port = port or free_port()
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        self._as: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            self._as = [runuser, "-u", "postgres", "--"] if runuser else ["su", "postgres", "-c"]

    @classmethod
    def available(cls) -> str | None:
        """None if a private server can run here, else why not."""
        if _pg_bin("initdb") is None or _pg_bin("pg_ctl") is None:
            return "PostgreSQL server binaries (initdb, pg_ctl) not found"
        if os.geteuid() == 0:
            try:
                import pwd

                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root and there is no 'postgres' user to run PostgreSQL as"
        return None

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        cmd = [*self._as, *args]
        if self._as[-1:] == ["-c"]:  # su -c takes one string
            cmd = [*self._as, " ".join(args)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise ClusterError(f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
                               f"\n{_tail(self.root / 'postgres.log')}")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> "PrivatePostgres":
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as:
            shutil.chown(self.root, user="postgres")
        self._run(self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        return self

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-o", opts, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast`` ends sessions and shuts down cleanly; ``immediate`` is a crash."""
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists() and port_open(self.port)

    def destroy(self) -> None:
        if self.running():
            try:
                self.stop("immediate")
            except ClusterError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class LocalCluster:
    """PostgreSQL databases + MLflow server + Ray head + Ray worker nodes, as in docker-compose.yml.

    ``postgres_admin_url`` names a PostgreSQL server where two fresh databases are created, one
    for the Optuna storage and one for MLflow's backend store (compose's ``postgres`` service
    does the same with its init script).
    """

    workdir: Path
    postgres_admin_url: str
    worker_cpus: int = 2
    dashboard: bool = True
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    head_env: dict[str, str] = field(default_factory=dict)
    head: RayHead | None = None
    workers: list[RayNode] = field(default_factory=list)
    mlflow: MlflowServer | None = None
    optuna_url: str = ""
    mlflow_backend_uri: str = ""
    _databases: list[str] = field(default_factory=list)

    def start(self) -> "LocalCluster":
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:8]
        try:
            self.optuna_url = create_database(self.postgres_admin_url, f"autoopt_optuna_{tag}")
            self._databases.append(f"autoopt_optuna_{tag}")
            mlflow_url = create_database(self.postgres_admin_url, f"autoopt_mlflow_{tag}")
            self._databases.append(f"autoopt_mlflow_{tag}")
            from autoopt.storage import sqlalchemy_url

            self.mlflow_backend_uri = sqlalchemy_url(mlflow_url)
            # MLflow's migrations (~25 s) overlap with Ray's start-up.
            self.mlflow = start_mlflow_server(self.mlflow_backend_uri, self.workdir / "mlartifacts",
                                              self.workdir / "mlflow.log", wait=False)
            self.head = start_ray_head(self.workdir, self.token, dashboard=self.dashboard, extra_env=self.head_env)
            self.add_worker()
            self.mlflow.wait_until(self.mlflow.healthy, 180, "/health")
        except BaseException:
            self.stop()
            raise
        return self

    def add_worker(self, num_cpus: int | None = None) -> RayNode:
        """Start one more worker node (each has the custom resource ``worker_node``)."""
        assert self.head is not None, "start() the cluster first"
        cpus = num_cpus or self.worker_cpus
        node = start_ray_worker(self.head, self.workdir, f"ray-worker-{len(self.workers) + 1}",
                                num_cpus=cpus, resources={"worker_node": cpus})
        self.workers.append(node)
        return node

    def client_env(self, *, via_client: bool = True) -> dict[str, str]:
        """What a client exports to submit studies: the compose ``.env`` client section."""
        assert self.head is not None and self.mlflow is not None
        return {
            **ray_env(self.token),
            "AUTOOPT_STORAGE": self.optuna_url,
            "AUTOOPT_TRACKING_URI": self.mlflow.url,
            "AUTOOPT_RAY_ADDRESS": self.head.client_address if via_client else self.head.gcs_address,
        }

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop everything started (SIGTERM, SIGKILL after ``grace_s``), and drop the databases;
        safe to call twice."""
        services: list[Service] = [*reversed(self.workers), *(s for s in (self.head, self.mlflow) if s is not None)]
        for service in services:  # all at once: they shut down in parallel, not one timeout after another
            service._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for service in services:
            service.stop(timeout=max(0.0, deadline - time.monotonic()))
        while self._databases:
            try:
                drop_database(self.postgres_admin_url, self._databases.pop())
            except Exception:  # noqa: BLE001 - the server may be gone; nothing to keep
                pass


__all__ = [
    "CLIENT_ENV",
    "ClusterError",
    "LocalCluster",
    "MlflowServer",
    "PrivatePostgres",
    "RayHead",
    "RayNode",
    "create_database",
    "drop_database",
    "ray_env",
    "start_mlflow_server",
    "start_ray_head",
    "start_ray_worker",
]
