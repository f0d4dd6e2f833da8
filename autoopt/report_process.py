"""Draw a finished study's report in a process of its own, at low CPU priority.

The plots take seconds of CPU (plotly figures, matplotlib PNGs). Drawn on a thread of the
driver, they hold its interpreter lock while the next study's loop hands out trials, and that
study's workers wait. Here the driver pickles what the report reads (the study's trials and
attributes, the tracking settings, the parent run) to this module's standard input; this process
draws the plots, logs them to the parent run and ends it. The input never goes on a command line,
so a tracking URI's password stays out of ``ps``.

Started with ``python -m autoopt.report_process``, never with ``multiprocessing``: spawning would
import the user's ``__main__`` again, and a script that runs a study at module level would run it
twice.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

#: How much lower than the driver the report runs (``os.nice``): trials come first.
NICENESS = 10


def draw_in_process(payload: dict[str, Any], timeout: float | None = 900.0) -> tuple[bool, str]:
    """Run :func:`main` in a new Python process on ``payload``; (succeeded, the end of its stderr)."""
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    try:
        done = subprocess.run([sys.executable, "-m", "autoopt.report_process"], input=pickle.dumps(payload),
                              capture_output=True, timeout=timeout, env=env, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]


def main() -> int:
    """Read the payload from stdin, draw the report, log it and end the parent run."""
    try:
        os.nice(NICENESS)
    except (AttributeError, OSError):  # pragma: no cover - no nice() on this platform
        pass
    payload = pickle.loads(sys.stdin.buffer.read())
    from autoopt.report import study_from_parts
    from autoopt.tracking import StudyTracker

    tracker = StudyTracker(payload["tracking_config"])
    tracker._parent_run_id = payload["parent_run_id"]
    tracker._report_and_end(study_from_parts(payload["study"]), payload["state"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
