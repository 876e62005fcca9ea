# Two commands for a new user (see README): `make run` and `make test`.
# Both create the virtual environment in .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-slow bench eval-quickstart clean lock

# The environment is installed from the hashed lock (exact versions of every
# package), then the project itself without resolving anything.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Re-resolve the lock from pyproject.toml's ranges (needs the package index);
# commit requirements.lock with the change that needed it.
lock: $(STAMP)
	$(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --generate-hashes \
	  --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	  -o requirements.lock

# The main job, offline on the embedded mnist_5k digits: one VAE run (summary
# table), then a small beta sweep trained as one compiled program (table,
# sweep.csv, rate-distortion plot).
run: $(STAMP)
	$(PY) scripts/train.py --config experiments/quickstart.py --workdir runs/quickstart
	$(PY) scripts/sweep.py --config experiments/beta_sweep.py:small --workdir runs/beta_sweep_small

# The test suite (CPU, offline), and the long checks marked slow (minutes;
# CI runs both), each spread over TEST_WORKERS processes (pytest-xdist).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m slow

bench: $(STAMP)
	$(PY) scripts/bench.py

# Importance-weighted NLL (k = 5000) and diagnostics of the quickstart run.
eval-quickstart: $(STAMP)
	$(PY) scripts/evaluate.py --workdir runs/quickstart

clean:
	rm -rf $(VENV) runs .pytest_cache
