# Two commands on a fresh machine (see README):  make demo   and   make test
# Each installs what it needs into .venv first (torch==2.13.0 comes from the
# machine's local wheel; nothing is installed outside the project folder).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-all bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cardiostream demo

# Default run: everything but tests marked slow (a few minutes on 2 cores).
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/transport.py

clean:
	rm -rf $(VENV) .pytest_cache
