# Two commands matter: `make demo` and `make test`. Everything else supports them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format install serve-gunicorn bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## Start the platform with its demo: SQLite, tasks in-process, demo users printed on start.
demo: $(STAMP)
	$(BIN)/python manage.py demo --addrport $${PAIRWISE_ADDRPORT:-127.0.0.1:8000}

## The whole test suite: lint, then unit, integration (PostgreSQL, Redis, Celery) and browser tests.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/annotation_loop.py

clean:
	rm -rf $(VENV) var test-artifacts .pytest_cache .ruff_cache
