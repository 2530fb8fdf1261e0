# The two commands of the README:
#   make up     install what is needed and start teachloop on its embedded default
#   make test   install the dev tools and run lint, types, the layer contract and the whole test suite
.PHONY: up test install install-dev lint typecheck layers unit bench clean

VENV := .venv
BIN := $(VENV)/bin

up: install
	$(BIN)/teachloop up

test: install-dev lint typecheck layers
	$(BIN)/python -m pytest -q

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
	$(BIN)/python -m pytest -q tests/unit

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
