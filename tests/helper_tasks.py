"""Tasks for fault-injection tests. Importable by Ray workers (tests/ is on their PYTHONPATH)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from autoopt.tasks.tabular import DiabetesMLP


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


class SlowTask(DiabetesMLP):
    """Sleeps each epoch, so a test can stop things while trials are running."""

    name = "slow"

    def __init__(self, sleep_s: float = 1.0, **kw):
        super().__init__(**kw)
        self.sleep_s = sleep_s

    def evaluate(self, model, loader, device):
        time.sleep(self.sleep_s)
        return super().evaluate(model, loader, device)
