"""bench/engine.py's two kept-coordinator 1-second rows, in the tree this runs from (cwd and
PYTHONPATH): a 30-trial trivial study, then 48 one-second trials at once (its plots still drawn),
then, once the reports are drawn, 48 more. Probe for an old/new control."""
import json, os, tempfile
from pathlib import Path
from bench.common import Context, start_ray
from bench.overhead import SLEEP, TRIVIAL, _one, rates
from autoopt.tracking import wait_for_reports

start_ray(num_cpus=2)
ctx = Context(quick=False, out=Path(tempfile.mkdtemp()), seeds=[0])
_one(ctx, "autoopt", TRIVIAL, {}, 30, 2, "sqlite")
out = {"tree": os.getcwd()}
for key, settle in (("one_second", False), ("one_second_reports_done", True)):
    if settle:
        wait_for_reports()
    r = _one(ctx, "autoopt", SLEEP, {"sleep_s": 1.0}, 48, 2, "sqlite")
    busy = sum(e.seconds or 0.0 for e in r.events) / 2
    out[key] = round(1 - busy / r.wall_s, 4)
print(json.dumps(out), flush=True)
