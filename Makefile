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

# three pytest processes, a test file each at a time (--dist loadfile: a file's module fixtures,
# such as test_cluster's Ray cluster, are made once): the suite mostly waits on processes and
# servers, and on 2 cores three at once took 13 min against 23 min one at a time (four: 20 min, with
# the cluster's fault tests timing out)
test: install
	$(BIN)/python -m pytest -q -n 3 --dist loadfile --durations=20

test-fast: install
	$(BIN)/python -m pytest -q --durations=10 -m "not cluster and not browser and not slow"

.PHONY: install demo test test-fast
