# f2pipe: `make dev` and `make test` are the two commands; see README.md.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: setup setup-test system system-test console venv lint format test test-unit test-integration dev bench clean help

help:
	@echo "make setup   virtual environment, packages, console assets and system packages (mosquitto, redis, postgresql, npm)"
	@echo "make lint    ruff (lint + format check) and mypy"
	@echo "make test    setup, lint, then the whole test suite against real servers"
	@echo "make format  apply ruff's formatting and safe fixes"
	@echo "make dev     the whole pipeline on this machine (f2pipe dev up; Ctrl-C stops it)"
	@echo "make bench   f2pipe bench --quick"

setup: system venv console

# make test also needs the browser the console's tests drive (Debian's chromium).
setup-test: system-test venv console

system:
	@scripts/setup-system.sh

system-test:
	@scripts/setup-system.sh --with-browser

# The console's front-end libraries (npm, locked) copied into the api package.
console:
	@scripts/build-console.sh

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q "uv==$(UV_VERSION)"

# uv.lock pins every package; --frozen refuses to run if pyproject and lock disagree.
venv: $(UV)
	$(UV) sync --frozen --all-packages --python $(PYTHON)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The suite on TimescaleDB (when `make setup` installed it), then the database layer again on
# plain PostgreSQL: migrations and the sink must work on both.
# --durations: the suite must stay under 25 min in CI; the log names what costs the most.
test: setup-test lint
	$(BIN)/python -m pytest --durations=25
	F2PIPE_TIMESCALEDB=off $(BIN)/python -m pytest -m database

test-unit: venv
	$(BIN)/python -m pytest tests/unit

test-integration: setup-test
	$(BIN)/python -m pytest tests/integration

# DEV_ARGS, e.g. make dev DEV_ARGS="--controllers 100 --base-port 35400"
dev: setup
	$(BIN)/f2pipe dev up $(DEV_ARGS)

bench: venv
	$(BIN)/f2pipe bench --quick

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache .hypothesis
