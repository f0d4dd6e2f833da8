"""How often a ``ray://`` connection loses its per-client server to the client proxy's fork race
(ray#63202), with the head's extra environment given on the command line.

A head like docker-compose's ``ray-head`` (token auth, no CPUs; ``tests/local_cluster.py``), one
client connected and busy (puts and gets in a loop, as a running study is), and another client
connecting ``N`` times one after the other; two busy loops load the cores. Prints each connection
(``ok``/``fail`` and seconds) and a JSON line with the count of failures.

    PYTHONPATH=. .venv/bin/python -m bench.ray_client_race 50
    PYTHONPATH=. .venv/bin/python -m bench.ray_client_race 50 GRPC_ENABLE_FORK_SUPPORT=-

``tests/local_cluster.py``'s ``HEAD_ENV`` is applied first (it turns gRPC's fork handlers off);
``NAME=-`` leaves ``NAME`` out of it, so ``GRPC_ENABLE_FORK_SUPPORT=-`` measures Ray's default.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import local_cluster  # noqa: E402
from local_cluster import ray_env, start_ray_head  # noqa: E402

HOLD = """
import ray, time
ray.init({addr!r})
start = time.time()
while time.time() - start < 1800:
    ray.get(ray.put(b"x" * 200000)); ray.cluster_resources()
"""
ONE = """
import ray, time
start = time.time()
try:
    ray.init({addr!r}); ray.cluster_resources(); print("ok", round(time.time() - start, 2))
except Exception as exc:
    print("fail", round(time.time() - start, 2), type(exc).__name__)
"""


def main(argv: list[str]) -> None:
    n = int(argv[0])
    extra = dict(kv.split("=", 1) for kv in argv[1:])
    for name in [k for k, v in extra.items() if v == "-"]:
        del extra[name]
        local_cluster.HEAD_ENV.pop(name, None)
    token = secrets.token_hex(16)
    work = Path(tempfile.mkdtemp(prefix="ray-client-race-"))
    head = start_ray_head(work, token, dashboard=False, extra_env=extra)
    env = {**os.environ, **ray_env(token)}
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(addr=head.client_address)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = []
    try:
        time.sleep(8)  # the busy client is connected
        for i in range(n):
            done = subprocess.run([sys.executable, "-c", ONE.format(addr=head.client_address)], env=env,
                                  capture_output=True, text=True, timeout=180)
            line = (done.stdout.strip().splitlines() or ["fail no output"])[-1]
            results.append(line)
            print(i, line, flush=True)
    finally:
        for proc in [holder, *load]:
            proc.kill()
        head.stop()
    print(json.dumps({"head_env": {**local_cluster.HEAD_ENV, **extra}, "connections": n,
                      "failed": sum(not line.startswith("ok") for line in results)}))


if __name__ == "__main__":
    main(sys.argv[1:])
