# Courier: `make run` starts a server on the embedded default; `make test` runs every check.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080
DATA   ?= ./courier-data

.PHONY: run test lint typecheck unit cluster-e2e bench bench-quick clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Courier needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(VENV)/.runtime $@

run: $(VENV)/.runtime
	$(BIN)/courier serve --host $(HOST) --port $(PORT) --data-dir $(DATA)

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(VENV)/.dev
	$(BIN)/mypy

unit: $(VENV)/.dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The end-to-end suite again, against the cluster adapters (PostgreSQL, NATS, Redis).
cluster-e2e: $(VENV)/.dev
	COURIER_TEST_BACKEND=cluster $(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

test: lint typecheck unit cluster-e2e

bench: $(VENV)/.dev
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(VENV)/.dev
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
