# Two commands on a fresh machine (see README):  make demo   and   make test
# Each installs what it needs into .venv first (torch==2.13.0 comes from the
# machine's local wheel; nothing is installed outside the project folder).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# CI (.ci/run runs with CI=true) also installs the optional Ray extra, so that the Ray test
# of tests/test_study.py runs there; elsewhere `make` installs the test extra alone and that
# test skips, saying why.
comma  := ,
EXTRAS := test$(if $(CI),$(comma)ray)

.PHONY: install browser demo lint test test-all bench fast-peer clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cardiostream demo

# The dependency arrows (import-linter contracts in pyproject.toml) and the lint rules.
lint: $(STAMP)
	$(BIN)/lint-imports --no-logo
	$(BIN)/ruff check .

# The viewer's end-to-end test drives Debian's Chromium through its chromedriver. Installed
# here where it is missing and apt-get can (root); elsewhere that one test skips and says why.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium and chromium-driver for the viewer's browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver >/dev/null) || echo "could not install chromium: its test skips"; \
	else echo "no chromium at /usr/bin/chromium and no root apt-get: the viewer's browser test skips"; fi

# Default run: lint, then everything but tests marked slow (a few minutes on 2 cores).
test: $(STAMP) browser
	$(BIN)/lint-imports --no-logo
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" -q

test-all: $(STAMP) browser
	$(BIN)/lint-imports --no-logo
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/transport.py

# The CPU peer (issue 15): FAST + OpenVINO against our engine on the same U-Net and frames.
# FAST stays out of the project's install: it gets its own venv; it also needs Debian's
# libusb-1.0-0 and an OpenCL platform (pocl-opencl-icd), installed by hand as root.
FAST_VENV := .venv-fast
$(FAST_VENV)/.installed-stamp:
	$(PYTHON) -m venv $(FAST_VENV)
	$(FAST_VENV)/bin/python -m pip install --quiet --disable-pip-version-check pyfast==4.18.0 numpy
	touch $@

fast-peer: $(STAMP) $(FAST_VENV)/.installed-stamp
	$(BIN)/python bench/fast_peer.py --fast-python $(FAST_VENV)/bin/python

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache
