"""The driver's Ray (embedded or a cluster), connected from one thread that lives as long as the process.

Why a thread of its own: on Linux, the processes ``ray.init`` starts for an embedded Ray (GCS,
raylet, agents) are tied to the *thread* that started them (``PR_SET_PDEATHSIG``): they are
killed when that thread ends. A study started with ``autoopt.submit`` as a process's first Ray
call ran ``ray.init`` on its study thread, so Ray died with that study, and the process's next
study waited 60 s for a GCS that was gone, after which Ray ended the process. Here every
connection is made on one daemon thread that is never ended, so Ray lives exactly as long as the
process. The same thread lets a study connect while it loads its task (:func:`call_soon`): the
two overlap instead of one waiting for the other.

Not a ``ThreadPoolExecutor``: its thread is joined, and so ended, before ``atexit`` handlers
run, which would kill the embedded Ray before Ray's own exit handler shuts it down cleanly.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future, wait
from typing import Any, Callable, Iterator

import ray

#: Where to find the Ray cluster (``ray://host:10001`` or a GCS address); unset: an embedded Ray.
ENV_RAY_ADDRESS = "AUTOOPT_RAY_ADDRESS"
#: How long a process that is exiting waits for a Ray start still in flight, so it can shut it down.
EXIT_WAIT_S = 60.0
#: Starts of an embedded Ray tried. Ray gives its raylet a fixed 30 s to register with the GCS
#: (``ray._private.node``); on a loaded machine that once ran out (a CI run's `autoopt run`), and
#: the next start went through. The failed start's processes are ended before the next one.
START_ATTEMPTS = 2
_STARTUP_TIMED_OUT = "The current node timed out during startup"

_log = logging.getLogger(__name__)

_jobs: "queue.SimpleQueue[tuple[Future, Callable[[], Any]]]" = queue.SimpleQueue()
_thread: threading.Thread | None = None
_thread_lock = threading.Lock()
#: the job queued last: jobs run in order, so once it is done all of them are
_last: Future | None = None


def _run_into(future: Future, fn: Callable[[], Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn())
    except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
        future.set_exception(exc)


def _serve() -> None:
    while True:
        _run_into(*_jobs.get())


def _on_ray_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def call_soon(fn: Callable[[], Any]) -> Future:
    """Run ``fn`` on the Ray thread (after what was queued before it); its result or error comes
    back through the returned future. Called from the Ray thread itself, ``fn`` runs at once."""
    global _thread, _last
    future: Future = Future()
    if _on_ray_thread():
        _run_into(future, fn)
        return future
    with _thread_lock:
        if _thread is None:
            _thread = threading.Thread(target=_serve, name="autoopt-ray", daemon=True)
            _thread.start()
            atexit.register(_settle_at_exit)
        _last = future
        _jobs.put((future, fn))
    return future


def _settle_at_exit() -> None:
    """A process ending while Ray still starts (a spec error found meanwhile): let the start end,
    then shut Ray down, instead of leaving it half made while the interpreter goes away."""
    if _last is not None:
        wait([_last], timeout=EXIT_WAIT_S)
    if ray.is_initialized():
        ray.shutdown()


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` ($AUTOOPT_RAY_ADDRESS / $RAY_ADDRESS) or start a local Ray, on the
    Ray thread; returns once connected (its errors are raised here)."""
    if ray.is_initialized():
        return
    call_soon(lambda: _connect(address, num_cpus)).result()


def _connect(address: str | None, num_cpus: int | None) -> None:
    if ray.is_initialized():
        return
    address = address or os.environ.get(ENV_RAY_ADDRESS) or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False}
    with _no_sigterm_note():
        if not address:  # embedded: a private local instance, quiet unless something goes wrong
            kwargs.update(include_dashboard=False, num_cpus=num_cpus, logging_level=logging.ERROR)
            _init_loopback_only(kwargs)
            return
        kwargs["address"] = address
        attempts = 5
        for attempt in range(attempts):
            try:
                ray.init(**kwargs)
                return
            except ConnectionAbortedError:
                # Ray client (ray://): the head's proxy occasionally loses the per-client server to a
                # gRPC fork race (ray#63202, "Initialization failure from server"); a new connection
                # gets a new one.
                if attempt == attempts - 1 or not str(address).startswith("ray://"):
                    raise
                ray.shutdown()
                time.sleep(2.0 * (attempt + 1))


def _init_loopback_only(kwargs: dict[str, Any]) -> None:
    """Start the embedded Ray with every server (GCS, raylet, object manager, workers, agents)
    bound to 127.0.0.1: it has no authentication, so nothing off this machine may reach it.

    Ray binds to all interfaces of its node IP unless it runs in its local-only mode, the one it
    uses on macOS and Windows (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read once at import);
    that mode is switched on for this start only, so a later connection to a cluster in the
    same process advertises the real node IP again.
    """
    from ray._private import ray_constants

    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            started = time.time()
            try:
                ray.init(_node_ip_address="127.0.0.1", **kwargs)
                return
            except Exception as exc:
                if attempt == START_ATTEMPTS or _STARTUP_TIMED_OUT not in str(exc):
                    raise
                left = _ray_processes(since=started)
                _log.warning("autoopt: the local Ray did not start (its raylet did not register within Ray's "
                             "30 s; a busy machine?): ending its %d processes and starting it again", len(left))
                _end(left)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode


def _ray_processes(since: float) -> list[Any]:
    """This process's descendants started since ``since`` that belong to a Ray node (its
    binaries, its Python scripts, its workers): what an embedded start that failed left running."""
    import psutil  # Ray's own copy (ray/thirdparty_files), on the path once ray is imported

    ray_dir = os.path.dirname(ray.__file__)
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline, created = proc.cmdline(), proc.create_time()
        except psutil.Error:  # gone meanwhile, or not ours to read
            continue
        if created >= since - 1.0 and any(part.startswith((ray_dir, "ray::")) for part in cmdline[:3]):
            found.append(proc)
    return found


def _end(procs: list[Any]) -> None:
    import psutil

    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()  # SIGKILL: a stopped or hung process ends too
    psutil.wait_procs(procs, timeout=10)


@contextlib.contextmanager
def _no_sigterm_note() -> Iterator[None]:
    """Ray notes that it sets no SIGTERM handler off the main thread; a study sets its own while
    it runs (``StudyRunner._run``), so the note would only puzzle the user."""
    ray_log = logging.getLogger("ray._private.worker")
    drop = lambda record: "SIGTERM handler is not set" not in record.getMessage()  # noqa: E731
    ray_log.addFilter(drop)
    try:
        yield
    finally:
        ray_log.removeFilter(drop)


__all__ = ["ENV_RAY_ADDRESS", "call_soon", "ensure_ray"]
