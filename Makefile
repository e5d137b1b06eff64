# hookstream: `make run` starts the local stack, `make test` runs the whole suite. Both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench chart clean prometheus

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "hookstream needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/hookstream dev

# Prometheus and promtool (Debian's package) for the dashboard and alert tests
prometheus:
	@sh ops/setup/prometheus.sh

test: $(STAMP) prometheus
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	@echo "make bench arrives with the benchmark issue; bench/http_servers.py compares HTTP stacks today"
	$(BIN)/python bench/http_servers.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
