# `make demo` and `make test` each create .venv when missing and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint docs browser clean

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
	$(BIN)/paragrad train demo/train.csv --target y --workers 2 --engine local --out demo/model.npz
	$(BIN)/paragrad evaluate demo/model.npz demo/test.csv
	$(BIN)/paragrad predict demo/model.npz demo/test.csv --workers 2 --out demo/predictions.csv

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

# The documentation site, from docs/ and the docstrings; --strict fails on a broken link or
# a reference to a name that does not exist.
docs: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The page test drives Debian's chromium: installed here when missing, where we may (root
# with apt-get); anywhere else this does nothing and that test is skipped.
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the page test"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
			|| echo "could not install chromium, which the page test needs" >&2; \
	fi

test: lint docs browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo site .pytest_cache .ruff_cache .mypy_cache
