"""Studies submitted as Ray Jobs: the driver runs on the cluster, with the user's working directory shipped to it.

``autoopt run SPEC --submit`` packs the current directory as the job's ``runtime_env``
``working_dir`` (so the user's own modules reach the driver and every worker), starts
``autoopt run SPEC`` as the job's entrypoint on the head, and returns the job id at once: the
laptop may sleep, the study goes on. ``autoopt status|logs|stop NAME`` find the study's latest
job by its metadata.

The job API is the Ray dashboard's (port 8265), with the cluster's token authentication:
``$AUTOOPT_JOBS_ADDRESS`` (``--jobs-address``), else ``http://<host of AUTOOPT_RAY_ADDRESS>:8265``.
The driver gets this machine's ``AUTOOPT_STORAGE`` / ``AUTOOPT_TRACKING_URI``, or
``AUTOOPT_JOB_STORAGE`` / ``AUTOOPT_JOB_TRACKING_URI`` where the cluster reaches them by other names.
"""

from __future__ import annotations

import os
import shlex
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ENV_JOBS_ADDRESS = "AUTOOPT_JOBS_ADDRESS"
#: The interpreter the entrypoint runs on the cluster (the images have autoopt installed for ``python``).
ENV_JOB_PYTHON = "AUTOOPT_JOB_PYTHON"
DASHBOARD_PORT = 8265
#: The storage and tracking server as the cluster reaches them, when that differs from this machine's view.
ENV_JOB_STORAGE = "AUTOOPT_JOB_STORAGE"
ENV_JOB_TRACKING_URI = "AUTOOPT_JOB_TRACKING_URI"
#: Settings the driver needs that the cluster does not get from the spec file: where results go.
SHIPPED_ENV = ("AUTOOPT_STORAGE", "AUTOOPT_TRACKING_URI", "MLFLOW_TRACKING_URI", "AUTOOPT_TRUSTED_TASKS",
               "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
#: Never shipped with the working directory: environments, local stores, caches.
EXCLUDES = [".venv", "venv", ".git", "mlartifacts", "mlruns", "mlflow.db", "*.db", "*.db-wal", "*.db-shm", "__pycache__", "reports",
            "*.ckpt", "lightning_logs"]
STUDY_KEY = "autoopt_study"


class JobError(RuntimeError):
    """The job API could not be reached or refused the request; the message says which address."""


def jobs_address(address: str | None = None) -> str:
    """The job API's URL: given, ``$AUTOOPT_JOBS_ADDRESS``, or the Ray address's host on port 8265."""
    address = address or os.environ.get(ENV_JOBS_ADDRESS)
    if address:
        return address if "://" in address else f"http://{address}"
    ray_address = os.environ.get("AUTOOPT_RAY_ADDRESS") or os.environ.get("RAY_ADDRESS") or ""
    host = urlparse(ray_address if "://" in ray_address else f"ray://{ray_address}").hostname
    if not host:
        raise JobError(f"no cluster to submit to: set {ENV_JOBS_ADDRESS} (the Ray dashboard, e.g. "
                       f"http://127.0.0.1:{DASHBOARD_PORT}) or AUTOOPT_RAY_ADDRESS")
    return f"http://{host}:{DASHBOARD_PORT}"


def client(address: str | None = None) -> Any:
    from ray.job_submission import JobSubmissionClient

    url = jobs_address(address)
    try:
        return JobSubmissionClient(url)
    except Exception as exc:  # noqa: BLE001 - connection refused, bad token, not a dashboard
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise JobError(f"the Ray job API at {url} did not answer: {first}") from None


def submit(spec_file: Path, spec: Any, run_args: list[str], *, address: str | None = None,
           workdir: Path | None = None) -> str:
    """Submit ``autoopt run spec_file *run_args`` as a Ray job from ``workdir``; returns the job id."""
    from autoopt.spec import SpecError

    root = (workdir or Path.cwd()).resolve()
    spec_path = Path(spec_file).resolve()
    try:
        relative = spec_path.relative_to(root)
    except ValueError:
        raise SpecError(f"--submit ships the working directory {root}; the spec {spec_file} must be inside it") from None
    # the driver runs on the cluster: where it reaches the storage and tracking server may differ
    # from this machine's addresses (compose: postgres:5432 inside, 127.0.0.1:5432 on the host)
    storage = spec.storage or os.environ.get(ENV_JOB_STORAGE) or os.environ.get("AUTOOPT_STORAGE") or ""
    if not storage or storage.startswith(("sqlite", "journal")):
        raise SpecError("--submit runs the study on the cluster: use a storage the cluster can reach "
                        "(--storage / AUTOOPT_STORAGE, e.g. postgresql://user:pw@host/db), not a local file")
    python = os.environ.get(ENV_JOB_PYTHON, "python")
    entrypoint = " ".join(shlex.quote(a) for a in [python, "-m", "autoopt.cli", "run", str(relative),
                                                    "--ray-address", "auto", "--json", *run_args])
    env = {k: os.environ[k] for k in SHIPPED_ENV if os.environ.get(k)}
    env["AUTOOPT_STORAGE"] = storage
    if os.environ.get(ENV_JOB_TRACKING_URI):
        env["AUTOOPT_TRACKING_URI"] = os.environ[ENV_JOB_TRACKING_URI]
    job_id = f"autoopt-{spec.name}-{uuid.uuid4().hex[:8]}"
    jobs = client(address)
    try:
        return jobs.submit_job(
            entrypoint=entrypoint, submission_id=job_id, entrypoint_num_cpus=0,
            runtime_env={"working_dir": str(root), "excludes": EXCLUDES, "env_vars": env},
            metadata={STUDY_KEY: spec.name},
        )
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise JobError(f"submitting study {spec.name!r} to {jobs_address(address)} failed: {first}") from None


def latest_job(name: str, address: str | None = None) -> Any | None:
    """The most recent job that ran study ``name`` (None if it was never submitted)."""
    jobs = [j for j in client(address).list_jobs() if (j.metadata or {}).get(STUDY_KEY) == name]
    return max(jobs, key=lambda j: j.start_time or 0, default=None)


def job_of(name: str, address: str | None = None) -> Any:
    job = latest_job(name, address)
    if job is None:
        raise JobError(f"no Ray job ran study {name!r} on {jobs_address(address)}")
    return job


def logs(name: str, address: str | None = None) -> str:
    job = job_of(name, address)
    return client(address).get_job_logs(job.submission_id)


def stop(name: str, address: str | None = None) -> tuple[str, bool]:
    """Stop the study's running job (its driver marks in-flight trials as interrupted); (job id, stopped)."""
    job = job_of(name, address)
    return job.submission_id, bool(client(address).stop_job(job.submission_id))


def describe(job: Any) -> dict[str, Any]:
    return {"job_id": job.submission_id, "status": str(getattr(job.status, "value", job.status)),
            "message": job.message, "entrypoint": job.entrypoint}


__all__ = ["ENV_JOBS_ADDRESS", "JobError", "describe", "job_of", "jobs_address", "latest_job", "logs", "stop", "submit"]
