# The project's commands: `make run` and `make test` are the two a newcomer needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint format clean

# Installing twice is quick: pip runs again only when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Serves the configured DSNs, or starts a local primary+mirror under .devdb/ first.
run: $(STAMP)
	$(BIN)/mirrorpool dev

lint: $(STAMP)
	$(BIN)/ruff check app tests
	$(BIN)/ruff format --check app tests
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

format: $(STAMP)
	$(BIN)/ruff check --fix app tests
	$(BIN)/ruff format app tests

clean:
	rm -rf $(VENV) .devdb .mypy_cache .ruff_cache .pytest_cache *.egg-info
