# The two commands a newcomer needs: `make test` and `make demo`. Both set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck pytest demo bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check bridge tests examples benchmarks
	$(BIN)/ruff format --check bridge tests examples benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy --strict bridge

pytest: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .demo *.egg-info .pytest_cache .mypy_cache .ruff_cache
