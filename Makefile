# geoloc: the two set-up commands are `make demo` and `make test` (both create .venv if missing).
# Installs come from requirements/lock.txt (exact versions, hash-checked); `make lock` refreshes it
# after a change to the dependencies in pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt

.PHONY: demo test lint typecheck pytest bench bench-full install lock lock-check clean sample frames

# The lock holds every dependency, so geoloc itself goes in with --no-deps; --no-build-isolation
# builds it with the locked setuptools instead of whatever the index serves at that moment.
# `pip check` then fails when pyproject.toml asks for something the lock does not have.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check || { echo "$(LOCK) does not satisfy pyproject.toml: run make lock" >&2; exit 1; }
	touch $(STAMP)

install: $(STAMP)

lock:
	VENV=$(VENV) PYTHON=$(PYTHON) scripts/lock.sh

lock-check:
	VENV=$(VENV) PYTHON=$(PYTHON) scripts/lock.sh --check

demo: $(STAMP)
	$(BIN)/python -m geoloc.demo

lint: $(STAMP)
	$(BIN)/ruff format --check geoloc tiling tests benchmarks migrations
	$(BIN)/ruff check geoloc tiling tests benchmarks migrations

typecheck: $(STAMP)
	$(BIN)/mypy

# Two workers by default (pytest-xdist): most of the suite's time is subprocesses, servers and
# clusters starting, and one process keeps only one of CI's two cores busy. Whole files go to one
# worker (their module fixtures: a Ray cluster, an external Postgres). PYTEST_WORKERS=0 runs it in
# this process.
PYTEST_WORKERS ?= 2

pytest: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all
	$(BIN)/python -m benchmarks.plot

bench-full: $(STAMP)
	$(BIN)/python -m benchmarks.run_all --full
	$(BIN)/python -m benchmarks.plot

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
