# `make demo` and `make test` each create .venv when missing and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-base

demo: $(VENV)/.installed-base
	mkdir -p demo
	$(BIN)/paragrad make-data classification --rows 50000 --features 20 --seed 0 \
		--out demo/train.csv --test-rows 10000 --test-out demo/test.csv
	$(BIN)/paragrad train demo/train.csv --target y --workers 2 --out demo/model.npz
	$(BIN)/paragrad evaluate demo/model.npz demo/test.csv
	$(BIN)/paragrad predict demo/model.npz demo/test.csv --workers 2 --out demo/predictions.csv

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache .mypy_cache
