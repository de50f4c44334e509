# django-tiercache developer commands. Everything runs from a local virtualenv (.venv) that the
# first command creates: a fresh clone needs only python3 (3.11+) and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Port of `make demo` (make demo PORT=8123).
PORT ?= 8000

.PHONY: help venv test lint format demo demo-services docs bench django-suite clean

help:
	@echo "make demo   - install, migrate, seed and run the example shop at http://127.0.0.1:8000/ (PORT=8123)"
	@echo "make test   - run the whole test suite (SQLite + fakeredis unless TIERCACHE_TEST_* are set)"
	@echo "make lint   - ruff, mypy and the import contracts (lint-imports)"
	@echo "make docs   - build the Sphinx docs into docs/_build/html (warnings are errors)"
	@echo "make django-suite - Django's own ORM tests with every queryset cached (djangosuite/)"
	@echo "make bench  - every benchmark, against cacheops and cachalot; tables to docs/benchmarks-latest.md"
	@echo "make demo-services - the shop on PostgreSQL, Redis, RabbitMQ, Celery and Varnish :6081"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Django's ORM test modules (sdist of the installed Django, cached in the venv) in every mode.
# DJANGO_SUITE_ARGS: e.g. "--mode persistent --module queries --strict".
DJANGO_SUITE_ARGS ?=
django-suite: $(STAMP)
	$(BIN)/python -m djangosuite $(DJANGO_SUITE_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: $(STAMP)
	cd example_project && ../$(BIN)/python demo.py --port $(PORT)

demo-services: $(STAMP)
	bash example_project/run_with_services.sh

$(VENV)/.docs-installed: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $@

docs: $(VENV)/.docs-installed
	$(BIN)/python -m sphinx -W --keep-going -E -b html docs docs/_build/html

BENCH_VENV := .venv-bench

$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[dev,hiredis]' django-cacheops django-cachalot 'psycopg[binary]'
	touch $@

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python benchmarks/run_all.py --output docs/benchmarks-latest.md

clean:
	rm -rf $(VENV) $(BENCH_VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache docs/_build
