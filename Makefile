# The set-up commands in the README: `make demo`, `make test` (the full suite, what CI runs) and
# `make test-fast` (everyday work: no cluster, browser or long end-to-end tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/activate:
	$(PY) -m venv $(VENV)

# torch first, pinned to the CPU wheel, so pip never pulls a multi-GB CUDA build.
install: $(BIN)/activate
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'

demo: install
	$(BIN)/autoopt run studies/quickstart.yaml

# Two pytest runs at once: everything but the cluster tests in three processes (pytest-xdist, a
# test file per process at a time: --dist loadfile makes a file's module fixtures once), and the
# cluster tests (a Ray head and worker nodes, PostgreSQL and MLflow servers as processes, nodes
# killed on purpose) one at a time beside them, their output printed when both are done. One
# after the other took 12.8 minutes on a slow 2-core machine, at once 10.3 (docs/benchmarks.md,
# section 6). A test that fails under that load is run again alone, once both are done, and its
# verdict is that run's (the fault tests' timing was why the phases used to run one after the
# other); the first failure stays in the output above it. Either failing fails the target.
PYTEST_MAIN := $(BIN)/python -m pytest -q -o cache_dir=.pytest_cache/main -m "not cluster"
PYTEST_CLUSTER := $(BIN)/python -m pytest -q -o cache_dir=.pytest_cache/cluster -m cluster tests/test_cluster.py
test: install
	@log=$$(mktemp); \
	$(PYTEST_CLUSTER) --durations=10 >$$log 2>&1 & cluster=$$!; \
	$(PYTEST_MAIN) -n 3 --dist loadfile --durations=20; main=$$?; \
	wait $$cluster; clus=$$?; \
	echo "=== the cluster tests (run beside the others) ==="; cat $$log; rm -f $$log; status=0; \
	if [ $$main -ne 0 ]; then \
	  echo "=== the failed tests above, run again alone ==="; $(PYTEST_MAIN) --lf --lfnf=none || status=1; fi; \
	if [ $$clus -ne 0 ]; then \
	  echo "=== the failed cluster tests above, run again alone ==="; $(PYTEST_CLUSTER) --lf --lfnf=none || status=1; fi; \
	exit $$status

test-fast: install
	$(BIN)/python -m pytest -q --durations=10 -m "not cluster and not browser and not slow"

.PHONY: install demo test test-fast
