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

# Everything but the cluster tests in three pytest processes (pytest-xdist, a test file per process
# at a time: --dist loadfile makes a file's module fixtures once); the suite mostly waits on
# processes and servers. Then the cluster tests (a Ray head and worker nodes, PostgreSQL and MLflow
# servers as processes, nodes killed on purpose) one at a time: beside the other tests their fault
# tests timed out under the load (2 cores: 23 min one at a time; all in three processes 13 min
# when they passed, 26 min when they did not). Both phases run; either failing fails the target.
test: install
	$(BIN)/python -m pytest -q -n 3 --dist loadfile --durations=20 -m "not cluster"; status=$$?; \
	$(BIN)/python -m pytest -q --durations=10 -m cluster tests/test_cluster.py || status=1; exit $$status

test-fast: install
	$(BIN)/python -m pytest -q --durations=10 -m "not cluster and not browser and not slow"

.PHONY: install demo test test-fast
