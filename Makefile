# Two entry points that work on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
# the demo's state (fleet file, caches, logs, env.sh), kept between runs
DEMO_STATE ?= demo-state

.PHONY: run test lint typecheck unit system-packages bench chaos fuzz dist clean test-aiohttp-front

# the package alone: enough to run the demo
$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $(RUN_STAMP)

# the package and the dev tools (tests, linters, the browser driver)
$(STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(RUN_STAMP)
	$(BIN)/edgeshield up --state-dir $(DEMO_STATE)

# a wheel in dist/ to install anywhere: pip install dist/edgeshield-*.whl
dist: $(RUN_STAMP)
	rm -rf dist build
	$(BIN)/python -m pip wheel -q --no-deps -w dist .
	@ls dist/*.whl

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Debian packages some tests run for real (nats-server, chromium), installed if missing
system-packages:
	sh scripts/system-packages

unit: $(STAMP) system-packages
	$(BIN)/pytest -q

test: lint typecheck unit

# the end-to-end and adversarial suites with every node on aiohttp's server (the
# front kept for one release; `make test` covers both fronts in tests/edge/front/)
test-aiohttp-front: $(STAMP)
	EDGESHIELD_FRONT=aiohttp $(BIN)/pytest -q tests/e2e tests/security

bench: $(STAMP)
	$(BIN)/python bench/hits.py

# kill nodes and workers under load while purging; every body and purge checked
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos.chaos --seconds $(or $(CHAOS_SECONDS),45)

# a longer fuzz run of request heads (edge) and purge bodies (purge API)
fuzz: $(STAMP)
	EDGESHIELD_FUZZ_EXAMPLES=$(or $(FUZZ_EXAMPLES),5000) $(BIN)/pytest -q tests/security/test_fuzz.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache dist build $(DEMO_STATE)
