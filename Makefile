# Two commands on a fresh machine (see README):  make demo   and   make test
# Each installs what it needs into .venv first (torch==2.13.0 comes from the
# machine's local wheel; nothing is installed outside the project folder).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo lint test test-all bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cardiostream demo

# The dependency arrows (import-linter contracts in pyproject.toml) and the lint rules.
lint: $(STAMP)
	$(BIN)/lint-imports --no-logo
	$(BIN)/ruff check .

# Default run: lint, then everything but tests marked slow (a few minutes on 2 cores).
test: $(STAMP)
	$(BIN)/lint-imports --no-logo
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(BIN)/lint-imports --no-logo
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/transport.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache
