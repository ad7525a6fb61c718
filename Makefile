# Everything a fresh clone needs is installed by these targets into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test bench chaos lint format clean tools alerts install

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# .venv with payrail installed (editable) and its `payrail` command in .venv/bin.
install: $(STAMP)

run: $(STAMP)
	$(BIN)/payrail serve

# promtool checks and unit-tests ops/prometheus/alerts.yml (tests/test_alert_rules.py).
tools:
	bash scripts/install-promtool.sh

# The whole suite: lint, unit/integration tests on SQLite and PostgreSQL (alert rules with
# promtool included), then the chaos runs against a real server on PostgreSQL (including the
# legacy run that must fail).
test: $(STAMP) tools
	$(BIN)/ruff check src tests
	$(BIN)/pytest
	scripts/chaos_ci.sh

alerts: tools
	promtool check rules ops/prometheus/alerts.yml
	promtool test rules ops/prometheus/alerts_test.yml

bench: $(STAMP)
	$(BIN)/payrail bench

# Chaos runs on PostgreSQL (timeout_recovery, duplicate_detection, spike_timeouts), then a
# legacy-mode run that must fail: docs/loadtest.md.
chaos: $(STAMP)
	scripts/chaos_ci.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean:
	rm -rf $(VENV) var reports .pytest_cache .hypothesis
