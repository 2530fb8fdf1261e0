# The two commands of the README:
#   make up     install what is needed and start teachloop on its embedded default
#   make test   install the dev tools and run lint, types, the layer contract and the whole test suite
.PHONY: up test install install-dev browser lint typecheck layers unit bench clean

VENV := .venv
BIN := $(VENV)/bin

up: install
	$(BIN)/teachloop up

# The suite runs on one worker per core, at most 4 (pytest-xdist; tests/conftest.py gives each worker one
# torch thread, so the workers never oversubscribe the cores). PYTEST_WORKERS=0 runs it in one process. Tests go
# to workers one by one (xdist's default `load`): schemathesis' operations share one node id, and `loadfile` would
# run only one of them.
PYTEST_WORKERS ?= auto
test: install-dev browser lint typecheck layers
	$(BIN)/python -m pytest -q --durations=25 -n $(PYTEST_WORKERS) --maxprocesses 4

# The console's browser tests drive Debian's chromium (never a browser downloaded by `playwright install`).
# Installed with apt-get only when missing and when we may (root, as in CI); otherwise those tests skip, saying why.
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the console's browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
		|| echo "warning: could not install chromium; the browser tests will skip"; \
	fi

install:
	scripts/setup.sh

install-dev:
	scripts/setup.sh dev,postgres

lint:
	$(BIN)/ruff check src tests bench

typecheck:
	$(BIN)/mypy

layers:
	$(BIN)/lint-imports

unit: install-dev
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --maxprocesses 4 tests/unit

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
