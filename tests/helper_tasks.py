"""Tasks for fault-injection tests. Importable by Ray workers (tests/ is on their PYTHONPATH)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from autoopt.tasks.tabular import DiabetesMLP


def _claim(path: str) -> bool:
    """True for the one process that creates ``path`` first."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


class CrashOnceTask(DiabetesMLP):
    """Kills its own worker process (SIGKILL) in the first trial's second epoch, once.

    A marker file makes the crash happen once, so the retried trial completes.
    """

    name = "crash_once"

    def __init__(self, marker: str, **kw):
        super().__init__(**kw)
        self.marker = marker

    def evaluate(self, model, loader, device):
        value = super().evaluate(model, loader, device)
        if not Path(self.marker).exists() and getattr(self, "_evals", 0) >= 1:
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        self._evals = getattr(self, "_evals", 0) + 1
        return value


class CrashLastTask(DiabetesMLP):
    """One worker process (the first to claim ``marker``) sleeps ``delay_s`` in its first
    evaluation and then kills itself (SIGKILL), once: the study's other trials finish before the
    loss is noticed, so the budget looks used up when the crashed trial's re-run is queued."""

    name = "crash_last"

    def __init__(self, marker: str, delay_s: float = 4.0, **kw):
        super().__init__(**kw)
        self.marker = marker
        self.delay_s = delay_s

    def evaluate(self, model, loader, device):
        value = super().evaluate(model, loader, device)
        if _claim(self.marker):
            time.sleep(self.delay_s)
            os.kill(os.getpid(), signal.SIGKILL)
        return value


class CrashBesideLongTask(DiabetesMLP):
    """Three trials at once, whichever processes they land on: the first to evaluate (claims
    ``long_marker``) runs on after the quick one has ended until a re-run has evaluated too (at
    most ``long_s`` seconds); the second (claims ``marker``) kills its worker (SIGKILL)
    ``delay_s`` seconds after the quick one has ended; the third is quick and says so (``marker``
    + ".quick"). The crash thus comes after the quick trial found the budget used up, while the
    long trial still runs. A re-run is quick and says so (``marker`` + ".rerun")."""

    name = "crash_beside_long"

    def __init__(self, marker: str, long_marker: str, delay_s: float = 2.0, long_s: float = 30.0, **kw):
        super().__init__(**kw)
        self.marker, self.long_marker = marker, long_marker
        self.delay_s, self.long_s = delay_s, long_s

    def _wait_for(self, suffix: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not os.path.exists(self.marker + suffix) and time.monotonic() < deadline:
            time.sleep(0.05)

    def evaluate(self, model, loader, device):
        value = super().evaluate(model, loader, device)
        if _claim(self.long_marker):
            self._wait_for(".quick", 120)
            self._wait_for(".rerun", self.long_s)
        elif _claim(self.marker):
            self._wait_for(".quick", 120)
            time.sleep(self.delay_s)
            os.kill(os.getpid(), signal.SIGKILL)
        else:
            quick = Path(self.marker + ".quick")
            (Path(self.marker + ".rerun") if quick.exists() else quick).touch()
        return value


class SlowTask(DiabetesMLP):
    """Sleeps each epoch, so a test can stop things while trials are running."""

    name = "slow"

    def __init__(self, sleep_s: float = 1.0, **kw):
        super().__init__(**kw)
        self.sleep_s = sleep_s

    def evaluate(self, model, loader, device):
        time.sleep(self.sleep_s)
        return super().evaluate(model, loader, device)


class GatedTask(DiabetesMLP):
    """Holds each trial at its first evaluation until it takes a token from the ``gate`` folder
    (or until ``gate/open`` exists). A test hands out tokens to let exactly that many trials
    through, so a fault lands while known trials are RUNNING, however fast or loaded the machine.
    Works across Ray nodes of one machine: the gate is a folder on its disk."""

    name = "gated"

    def __init__(self, gate: str, **kw):
        super().__init__(**kw)
        self.gate = gate

    def evaluate(self, model, loader, device):
        import weakref

        passed = self.__dict__.setdefault("_passed", weakref.WeakSet())  # one model per trial
        if model not in passed:
            self._take_token()
            passed.add(model)
        return super().evaluate(model, loader, device)

    def _take_token(self) -> None:
        import os
        import uuid

        gate = Path(self.gate)
        # the test's proof that this trial is in its worker (RUNNING in storage is not: the
        # coordinator marks a trial running before Ray has started it anywhere)
        waiting = gate / f"held-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        waiting.touch()
        try:
            while not (gate / "open").exists():
                for token in sorted(gate.glob("token-*")):
                    try:
                        token.unlink()  # atomic: one trial gets each token
                        return
                    except FileNotFoundError:
                        continue
                time.sleep(0.1)
        finally:
            waiting.unlink(missing_ok=True)


def make_slow_task(sleep_s: float = 0.0, **kw) -> SlowTask:
    """A task factory (a function annotated to return a Task), as a spec may name one."""
    return SlowTask(sleep_s=sleep_s, **kw)


def not_a_factory(**kw):
    """A plain function: a spec naming it must be refused before it is called."""
    Path(kw["marker"]).write_text("called")


class BuiltWhereTask(DiabetesMLP):
    """Slow to build (a dataset that takes ``build_s``), and leaves ``built-<pid>`` and
    ``trained-<pid>`` markers in ``marks``: which worker processes built it and trained on it."""

    name = "built_where"

    def __init__(self, marks: str, build_s: float = 2.0, **kw):
        super().__init__(**kw)
        self.marks = marks
        time.sleep(build_s)
        (Path(marks) / f"built-{os.getpid()}").touch()

    def evaluate(self, model, loader, device):
        (Path(self.marks) / f"trained-{os.getpid()}").touch()
        return super().evaluate(model, loader, device)
