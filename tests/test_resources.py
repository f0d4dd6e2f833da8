"""Per-trial resources against a real local Ray: a request no node can provide is an error within
seconds, ``gpus_per_trial: auto`` runs on a CPU-only machine, and the README example runs as written."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

import autoopt
from autoopt.resources import resolve_gpus
from autoopt.spec import SpecError, StudySpec

README = Path(__file__).resolve().parent.parent / "README.md"


def tiny(name: str, **kw) -> StudySpec:
    base = dict(name=name, task="tabular", task_options={"size": 0.25, "epochs": 2}, n_trials=2, workers=2,
                pruner="none", tracking=False, space={"optimizers": ["adam"], "schedulers": ["constant"]})
    return StudySpec.from_dict({**base, **kw})


@pytest.mark.parametrize("request_, needle", [({"gpus_per_trial": 0.5}, "GPU: 0.5"), ({"cpus_per_trial": 3}, "CPU: 3")])
def test_a_request_no_node_can_provide_fails_within_seconds(ray_local, workdir, request_, needle):
    start = time.monotonic()
    with pytest.raises(SpecError) as e:
        autoopt.run(tiny("nogpu", **request_))
    assert time.monotonic() - start < 15
    message = str(e.value)
    assert needle in message and "CPU: 2" in message, message  # the request and what the node has
    assert next(iter(request_)) in message


def test_auto_gpu_share_follows_the_cluster():
    assert resolve_gpus("auto", 2, [{"CPU": 8.0}]) == 0.0
    assert resolve_gpus("auto", 2, [{"CPU": 8.0, "GPU": 1.0}]) == 0.5
    assert resolve_gpus("auto", 3, [{"GPU": 1.0}]) == 0.3333
    assert resolve_gpus("auto", 2, [{"GPU": 4.0}]) == 1.0
    assert resolve_gpus("auto", 4, [{"GPU": 1.0}, {"GPU": 1.0}, {"GPU": 1.0}]) == 0.5
    assert resolve_gpus(0.25, 2, [{"CPU": 1.0}]) == 0.25


def test_readme_python_example_runs_on_a_cpu_only_machine(ray_local, workdir):
    """The README's Python example, run as written (only its trial budget cut to 2)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    found = [b for b in blocks if 'task="cv"' in b and "autoopt.submit(spec)" in b]
    assert len(found) == 1, "the README's Python example of a Task study is missing or duplicated"
    code = found[0]
    assert 'gpus_per_trial="auto"' in code
    code = code.replace("n_trials=30", "n_trials=2").replace('"cv"', '"cv", task_options={"size": 0.25, "epochs": 2}')
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own documentation
    result = scope["result"]
    assert sum(result.counts[k] for k in ("complete", "pruned", "failed")) == 2
    assert {t.user_attrs["autoopt.device"] for t in result.study.trials} == {"cpu"}
    assert result.study.user_attrs["autoopt.spec"]["gpus_per_trial"] == "auto"  # re-resolved on resume


@pytest.mark.slow
def test_an_autoscaling_cluster_waits_and_warns_every_interval(workdir):
    """With AUTOOPT_AUTOSCALING=1 a GPU request on a CPU-only Ray is waited for (a node may be
    added), and the user hears about it every AUTOOPT_RESOURCE_WARN_S seconds; Ctrl-C ends it."""
    import os
    import signal
    import subprocess
    import sys

    (workdir / "gpu.yaml").write_text(
        "name: gpu\ntask: tabular\ntask_options: {size: 0.25, epochs: 2}\nn_trials: 2\nworkers: 1\n"
        "gpus_per_trial: 1\ntracking: false\nspace: {optimizers: [adam], schedulers: [constant]}\n")
    log = workdir / "stderr.log"
    with open(log, "wb") as err:
        driver = subprocess.Popen([sys.executable, "-m", "autoopt.cli", "run", "gpu.yaml"], cwd=workdir,
                                  stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                  env={**os.environ, "AUTOOPT_AUTOSCALING": "1", "AUTOOPT_RESOURCE_WARN_S": "2"})
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and log.read_text().count("waiting for the autoscaler") < 3:
            assert driver.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        warnings = [line for line in log.read_text().splitlines() if "waiting for the autoscaler" in line]
        assert len(warnings) >= 3, log.read_text()[-3000:]
        assert "{CPU: 1, GPU: 1}" in warnings[-1] and "CPU: 2" in warnings[-1]
        os.killpg(driver.pid, signal.SIGINT)
        assert driver.wait(timeout=120) == 130, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
