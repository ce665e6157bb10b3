# The two commands of the README, and the set-up they share.
#   make demo   run `onshore demo` on the embedded defaults (local folders, SQLite, SUMO)
#   make test   ruff, mypy --strict and the whole pytest suite (scripts/check)
# Each creates .venv and installs what it needs on first use.

PYTHON ?= python3
VENV ?= .venv
DEMO_DIR ?= onshore-demo
BIN := $(VENV)/bin
# The torch pyproject.toml pins, installed on its own first: see the comment there.
TORCH := $(shell grep -o 'torch==[0-9][0-9.]*' pyproject.toml)

.PHONY: demo test check bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet '$(TORCH)'
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/onshore demo --dir $(DEMO_DIR)

test: $(BIN)/.installed
	VENV=$(VENV) scripts/check

check: test

bench: $(BIN)/.installed
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/regions.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .mypy_cache .ruff_cache .pytest_cache
