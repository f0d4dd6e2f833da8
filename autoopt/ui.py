"""Run the MLflow UI (``mlflow server``) on a study's tracking store: start it, wait until it answers, stop it, link to runs.

What ``autoopt ui`` runs. The logging itself is :mod:`autoopt.tracking`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from autoopt.redaction import redact
from autoopt.tracking import is_remote, local_artifact_root, sqlite_path


def store_uri_problem(uri: str) -> str | None:
    """Why ``mlflow server`` could not serve ``uri`` as its store; None if it can."""
    from mlflow.store.db.db_types import DATABASE_ENGINES

    if is_remote(uri) or "://" not in uri:
        return None
    scheme = uri.split("://", 1)[0].split("+", 1)[0]
    if scheme == "file" or scheme in DATABASE_ENGINES:
        return None
    return (f"tracking URI {redact(uri)!r} has the unknown scheme {scheme!r}; use sqlite:///path/mlflow.db, "
            f"{', '.join(e + '://...' for e in DATABASE_ENGINES if e != 'sqlite')}, file:///path or http(s)://server")


def port_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port``; None if it can. Checked before the server
    starts: with the port taken, ``/health`` could be answered by whatever holds it (an earlier
    ``autoopt ui`` on another store), and the UI shown would not be this store's."""
    if not 0 < port < 65536:
        return f"--port {port} is not a TCP port (1-65535)"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        return f"--host {host!r} does not resolve ({exc.strerror})"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            probe.bind(address)
        except OSError as exc:
            return (f"cannot listen on {host}:{port} ({exc.strerror}): another server (an earlier `autoopt ui`?) "
                    "holds it; stop it or pass --port")
    return None


def ui_url(host: str = "127.0.0.1", port: int = 5000) -> str:
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"


def start_ui(
    tracking_uri: str,
    host: str = "127.0.0.1",
    port: int = 5000,
    *,
    workers: int = 1,
    wait: bool = True,
    timeout: float = 90.0,
    log_path: str | Path | None = None,
) -> subprocess.Popen:
    """Run ``mlflow server`` (UI + REST API) on a local store; returns the process.

    With ``wait`` it returns once ``/health`` answers, and raises RuntimeError (with the server's
    output) if it exits or does not answer within ``timeout`` seconds. Stop it with
    ``proc.terminate()``.
    """
    if is_remote(tracking_uri):
        raise ValueError(
            f"tracking_uri {redact(tracking_uri)!r} is already a tracking server: open it in a browser"
        )
    path = sqlite_path(tracking_uri)
    if path is not None and not path.exists():
        raise FileNotFoundError(f"no MLflow store at {path}; run a study first or pass another tracking_uri")
    problem = port_problem(host, port)
    if problem:
        raise RuntimeError(problem)
    # the store URI (it may carry a password) goes through the environment, not the command line
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", str(workers)]
    root = local_artifact_root(tracking_uri)
    if root is not None:
        cmd += ["--artifacts-destination", str(root)]
    out = open(log_path, "ab") if log_path else None  # noqa: SIM115 - owned by the child
    # Own session: the server forks uvicorn and a job runner; stop_ui ends the whole group.
    # The GenAI job runner (a huey pool) is of no use for training runs: keep the UI light.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, "MLFLOW_BACKEND_STORE_URI": tracking_uri}
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None,
                            start_new_session=True, env=env)
    if out:
        out.close()
    if not wait:
        return proc
    url = ui_url(host, port) + "/health"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = Path(log_path).read_text(errors="replace")[-3000:] if log_path else ""
                raise RuntimeError(f"mlflow server exited with code {proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return proc
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
    except BaseException:  # stopped (Ctrl-C, SIGTERM) while waiting: the server goes too
        stop_ui(proc)
        raise
    stop_ui(proc)
    raise RuntimeError(f"mlflow server did not answer on {url} within {timeout:.0f} s")


def stop_ui(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a server started by :func:`start_ui`, with the worker processes it forked."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    try:  # children that outlived the parent
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def experiment_url(base_url: str, experiment_id: str) -> str:
    """Link that opens an experiment on its training-runs table in the MLflow 3 UI."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def run_url(base_url: str, experiment_id: str, run_id: str) -> str:
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


__all__ = ["experiment_url", "port_problem", "run_url", "start_ui", "stop_ui", "ui_url"]
