# Set-up and checks for tl_universality. `make demo` and `make test` work on a fresh
# machine with only Python 3.11: they create .venv, install, and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --disable-pip-version-check -c constraints.txt
SHELL := /bin/bash
# pip's log goes to a file: shown only when the install fails.
QUIET_PIP = > $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }

.PHONY: demo test lint format docs bench clean venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamp files: re-running reuses .venv and reinstalls only when the requirements change.
# The demo writes plots and an HTML report, so it installs the plot extra.
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt Makefile
	$(PIP) -e '.[plot]' $(QUIET_PIP)
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml constraints.txt Makefile
	$(PIP) -e '.[dev]' $(QUIET_PIP)
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/tl-universality demo

test: $(VENV)/.installed-dev
	scripts/ensure-chromium
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

docs: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/correlation.py

clean:
	rm -rf $(VENV) site build *.egg-info
