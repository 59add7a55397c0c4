# Two entry points: `make demo` (the main job on the built-in task) and `make test`.
# Both create or refresh the local virtualenv first; re-running is cheap (a stamp file).
# The first interpreter that actually runs (pyenv shims exist for versions not selected).
PYTHON ?= $(shell for p in python3.11 python3.12 python3; do \
	$$p -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,sim]"
	# openpi-client (the serving tests' real client) pins numpy<2, which jax contradicts;
	# it runs fine on numpy 2 with the deps above (websockets, msgpack, typing_extensions).
	$(PY) -m pip install -q --no-deps "openpi-client==0.1.2"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) launch/demo.py --out=demo_out

# Two workers (the CI machine has 2 cores), each test file on one worker so that module
# fixtures (a trained checkpoint, a dataset) are built once.
test: $(STAMP)
	$(PY) -m pytest -q -x -n 2 --dist loadfile --no-loadscope-reorder --durations=20 tests

lint: $(STAMP)
	$(PY) -m ruff check action_gen configs launch tests benchmarks
	$(PY) -m ruff format --check action_gen configs launch tests benchmarks

clean:
	rm -rf $(VENV) demo_out
