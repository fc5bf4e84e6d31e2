# geoloc: the two set-up commands are `make demo` and `make test` (both create .venv if missing).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench bench-full install clean sample frames

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m geoloc.demo

lint: $(STAMP)
	$(BIN)/ruff format --check geoloc tiling tests benchmarks migrations
	$(BIN)/ruff check geoloc tiling tests benchmarks migrations

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all
	$(BIN)/python -m benchmarks.plot

bench-full: $(STAMP)
	$(BIN)/python -m benchmarks.run_all --full
	$(BIN)/python -m benchmarks.plot

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
