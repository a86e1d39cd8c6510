# Two entry points that work on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench chaos fuzz clean test-aiohttp-front

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/edgeshield up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
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
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
