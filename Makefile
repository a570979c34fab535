# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint browser newman bench large compat load serve worker clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# requirements.txt includes requirements-api.txt (the API image installs only that one)
$(VENV)/.runtime: requirements.txt requirements-api.txt | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

demo: $(VENV)/.runtime  ## install, then run the whole service end to end on the demo model
	$(BIN)/python -m app demo

test: $(VENV)/.dev browser newman  ## install, lint, then run the whole test suite (the slow load test runs with `make load`)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The web UI's tests drive Debian's chromium and chromium-driver (tests/browser.py); installed here when
# either is missing (CI runs as root; elsewhere through sudo), with a font for readable screenshots.
# SECEV_NO_BROWSER=1 skips the install, and the browser tests then skip; without it a missing browser fails them.
CHROMIUM     ?= /usr/bin/chromium
CHROMEDRIVER ?= /usr/bin/chromedriver
browser:
	@if [ "$$SECEV_NO_BROWSER" = 1 ]; then echo "SECEV_NO_BROWSER=1: no browser installed, the browser tests will skip"; \
	elif [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then :; \
	elif ! command -v apt-get >/dev/null; then \
	  echo "the browser tests need $(CHROMIUM) and $(CHROMEDRIVER) (Debian: chromium, chromium-driver); no apt-get here:" \
	       "install them, or set SECEV_NO_BROWSER=1 to skip those tests" >&2; exit 1; \
	else \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else echo "installing chromium needs root or sudo (or set SECEV_NO_BROWSER=1)" >&2; exit 1; fi; \
	  echo "installing Debian's chromium and chromium-driver for the browser tests"; \
	  $$SUDO apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-liberation; \
	fi

# The Postman collection's test (tests/test_postman.py) runs newman, installed here from the npm registry
# into .node/ (ignored by git). Without node and npm that test skips, saying so.
NEWMAN_VERSION := 6.2.2
NEWMAN         := .node/node_modules/.bin/newman
newman:
	@if [ -x $(NEWMAN) ] && [ "$$($(NEWMAN) --version 2>/dev/null)" = $(NEWMAN_VERSION) ]; then :; \
	elif ! command -v npm >/dev/null; then echo "no npm here: the Postman test (tests/test_postman.py) will skip"; \
	else echo "installing newman $(NEWMAN_VERSION) into .node/"; \
	  npm install --prefix .node --no-audit --no-fund --loglevel=error newman@$(NEWMAN_VERSION); \
	fi

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
