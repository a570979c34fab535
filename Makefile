# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench large compat load serve worker clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

demo: $(VENV)/.runtime  ## install, then run the whole service end to end on the demo model
	$(BIN)/python -m app demo

test: $(VENV)/.dev  ## install, lint, then run the whole test suite (the slow load test runs with `make load`)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(VENV)/.dev
	$(BIN)/ruff check .

serve: $(VENV)/.runtime  ## the API under gunicorn, settings in app/gunicorn_conf.py (BIND, WEB_CONCURRENCY, THREADS, ...)
	$(BIN)/gunicorn -c python:app.gunicorn_conf

worker: $(VENV)/.runtime
	$(BIN)/python worker.py

$(VENV)/.bench: benchmarks/requirements.txt $(VENV)/.runtime
	$(BIN)/pip install --disable-pip-version-check -q -r benchmarks/requirements.txt
	touch $@

# One torch thread per process by default: on a shared machine, two threads per process wait on
# each other's cores (measured: a small convolution 100x slower), which no comparison survives.
BENCH_THREADS ?= 1
bench: $(VENV)/.bench  ## side-by-side benchmarks (about 40 minutes on two CPU cores); writes benchmarks/RESULTS.md
	OMP_NUM_THREADS=$(BENCH_THREADS) $(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# LARGE_MODEL=mobilenet_v3_small is the realistic model (about an hour on two CPU cores; minutes on a GPU)
LARGE_MODEL ?= small-cnn
large: $(VENV)/.runtime  ## peak memory of a 224 x 224 x 3 evaluation at 1000 and 3000 samples; writes benchmarks/LARGE.md
	$(BIN)/python benchmarks/large.py --model $(LARGE_MODEL)

compat: $(VENV)/.dev  ## the compatibility matrix (torchvision exports, before/after, live service); writes benchmarks/COMPAT.md
	$(BIN)/python benchmarks/compat.py --service $(COMPAT_ARGS)

clean:
	rm -rf $(VENV) demo-output

load: $(VENV)/.dev  ## the bounded load test: 50 clients, 500 jobs, on loopback
	$(BIN)/python -m pytest -q -p no:cacheprovider -m slow -s tests/test_load.py
