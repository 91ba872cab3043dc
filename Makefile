# Two commands for a newcomer: `make demo` and `make test` (each sets everything up itself).
PYTHON ?= python3.11
TORCH ?= torch==2.13.0
# The official BIDS validator (npm package; keep it equal to the Dockerfile's BIDS_VALIDATOR_VERSION).
BIDS_VALIDATOR ?= 1.15.0
VENV := .venv
BIN := $(VENV)/bin
DEMO_ARGS ?=

.PHONY: install bids-validator demo lint test test-fast test-slow container-smoke clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# Torch first and pinned (a bare `torch` requirement may pull a multi-GB CUDA build).
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '$(TORCH)'
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed bids-validator

# Into .node/ (no global install); without Node.js and npm it says so and the Python check is used.
bids-validator:
	@scripts/install-bids-validator.sh $(BIDS_VALIDATOR) .node

demo: install
	$(BIN)/python -m bids_anomaly.demo demo $(DEMO_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# What CI runs: the linters, then every test that needs no real data.
test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m 'not slow'

# The quick loop: unit tests only (no pipeline run), no linters.
test-fast: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m 'not slow and not integration'

test-slow: install
	$(BIN)/python -m pytest -q -m slow

# Build the image with podman (or ENGINE=docker) and run both levels in it; not part of `test`.
container-smoke:
	scripts/container-smoke.sh

clean:
	rm -rf demo .pytest_cache
