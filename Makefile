# The two commands a newcomer needs: `make test` and `make demo`. Both set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck pytest demo bench venv clean docker-compose

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

pytest: $(STAMP) docker-compose
	$(BIN)/python -m pytest -q -p no:cacheprovider

# tests/test_compose.py validates docker-compose.yml with Debian's docker-compose (1.29): installed
# here when missing and possible (root, or sudo without a password). Otherwise those tests fail
# and say how to install it; they never skip.
docker-compose:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y docker-compose; \
	  elif sudo -n true 2>/dev/null; then sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y docker-compose; \
	  else echo "docker-compose is missing and cannot be installed without root:" \
	    "tests/test_compose.py will fail (sudo apt-get install docker-compose)" >&2; fi; }

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .demo *.egg-info .pytest_cache .mypy_cache .ruff_cache
