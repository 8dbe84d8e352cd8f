# Set-up and checks for tl_universality. `make demo` and `make test` work on a fresh
# machine with only Python 3.11: they create .venv, install, and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Installs go through scripts/install: uv (bootstrapped with pip, several times faster), falling
# back to pip; TL_UNIVERSALITY_NO_UV=1 forces pip.
INSTALL = scripts/install $(VENV) $(1)
SHELL := /bin/bash

.PHONY: demo test lint format docs bench clean venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamp files: re-running reuses .venv and reinstalls only when the requirements change.
# The demo writes plots and an HTML report, so it installs the plot extra.
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt Makefile scripts/install
	$(call INSTALL,-e '.[plot]')
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml constraints.txt Makefile scripts/install
	$(call INSTALL,-e '.[dev]')
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
