# The two commands a newcomer needs: `make test` and `make demo`. Both set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck pytest demo bench venv clean debian-packages

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

pytest: $(STAMP) debian-packages
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Debian packages some tests drive for real, installed here when missing and possible (root, or
# sudo without a password); otherwise those tests fail and say how to install them, never skip:
# docker-compose (1.29) validates docker-compose.yml (tests/test_compose.py); openssl checks an
# audit record's MAC the way the README shows an auditor (tests/audit/test_audit_sink.py).
DEBIAN_PACKAGES := docker-compose openssl

debian-packages:
	@for pkg in $(DEBIAN_PACKAGES); do \
	  command -v $$pkg >/dev/null 2>&1 && continue; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$pkg; \
	  elif sudo -n true 2>/dev/null; then sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y $$pkg; \
	  else echo "$$pkg is missing and cannot be installed without root:" \
	    "some tests will fail (sudo apt-get install $$pkg)" >&2; fi; \
	done

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .demo *.egg-info .pytest_cache .mypy_cache .ruff_cache
