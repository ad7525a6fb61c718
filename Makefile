# Everything a fresh clone needs is installed by these targets into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test bench chaos lint format clean tools alerts lock browser lnbits deploy-tools \
	deploy-test install ha-tools ha-test

LOCKS := requirements/build.lock requirements/runtime.lock requirements/dev.lock
LNBITS_LOCK := requirements/lnbits.lock  # the real LNbits of the tests, in .venv-lnbits

# Installs exactly what requirements/*.lock pin, every file checked against its hash; payrail
# itself goes in editable with no dependency resolution of its own. `make lock` refreshes the
# locks on purpose (README, "Dependencies").
$(STAMP): $(LOCKS) pyproject.toml
	@$(PYTHON) scripts/check_python.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements/build.lock
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Resolve every dependency set again, with hashes (Python 3.11, the tested version).
# UPGRADE=name moves one package to its newest allowed version; otherwise pins stay put.
UV_COMPILE = $(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	$(if $(UPGRADE),--upgrade-package $(UPGRADE))
lock: $(STAMP)
	$(UV_COMPILE) requirements/build.in -o requirements/build.lock
	$(UV_COMPILE) pyproject.toml -o requirements/runtime.lock
	$(UV_COMPILE) pyproject.toml --extra dev -o requirements/dev.lock
	$(UV_COMPILE) requirements/lnbits.in -o requirements/lnbits.lock
	@echo "locks written: $(LOCKS) $(LNBITS_LOCK); run make test before committing them"

# .venv with payrail installed (editable) and its `payrail` command in .venv/bin.
install: $(STAMP)

run: $(STAMP)
	$(BIN)/payrail serve

# promtool checks and unit-tests ops/prometheus/alerts.yml (tests/test_alert_rules.py).
tools: deploy-tools
	bash scripts/install-promtool.sh

# Chromium for the dashboard's browser test (tests/test_dashboard_browser.py).
browser:
	bash scripts/install-chromium.sh

# A real LNbits 1.6.2 in .venv-lnbits for the Lightning tests (tests/lnbits_kit.py starts it).
lnbits:
	bash scripts/lnbits.sh install

# ZBD's official Node SDK (@zbd/node, pinned with its integrity hashes in
# tests/zbd/package-lock.json) for tests/test_zbd_sdk.py; Node 18+ and npm are needed.
ZBD_NODE := tests/zbd/node_modules/.package-lock.json
$(ZBD_NODE): tests/zbd/package.json tests/zbd/package-lock.json
	npm ci --prefix tests/zbd --no-audit --no-fund
zbd-node: $(ZBD_NODE)

# PgBouncer and HAProxy (Debian packages) for tests/test_pgbouncer.py and deploy-test.
deploy-tools:
	bash scripts/install-deploy-tools.sh

# The reference deployment on real parts, with faults (docs/deployment.md): its own
# PostgreSQL, PgBouncer, HAProxy, two nodes and a worker on ports 18400-18499. ≤ 5 minutes.
deploy-test: $(STAMP) deploy-tools
	$(BIN)/python -m payrail_tools.deploytest.run

# etcd, Patroni and pg_rewind (Debian packages) besides deploy-tools, for ha-test.
ha-tools:
	bash scripts/install-ha-tools.sh

# PostgreSQL high availability (docs/deployment.md): etcd, three PostgreSQL 15 members under
# Patroni (synchronous), HAProxy, PgBouncer, two nodes and a worker on ports 12600-12699; the
# primary killed -9 twice and switched over once under load. ≤ 9 minutes (its own deadline).
ha-test: $(STAMP) ha-tools
	$(BIN)/python -m payrail_tools.hatest.run

# The whole suite: lint, unit/integration tests on SQLite and PostgreSQL (alert rules with
# promtool included), then the chaos runs against a real server on PostgreSQL (including the
# legacy run that must fail), then the multi-node deployment test and the PostgreSQL failover
# test (docs/deployment.md).
test: $(STAMP) tools browser lnbits ha-tools zbd-node
	$(BIN)/ruff check src tests
	$(BIN)/pytest
	scripts/chaos_ci.sh
	$(BIN)/python -m payrail_tools.deploytest.run
	$(BIN)/python -m payrail_tools.hatest.run

alerts: tools
	promtool check rules ops/prometheus/alerts.yml
	promtool test rules ops/prometheus/alerts_test.yml

# Single payouts driven by wrk (scripts/install-wrk.sh installs Debian's package), batches by
# payrail's own client; docs/benchmarks.md.
bench: $(STAMP)
	bash scripts/install-wrk.sh
	$(BIN)/payrail bench

# The SQLite default (`make run`'s database), one server process, driven by wrk.
.PHONY: bench-sqlite
bench-sqlite: $(STAMP)
	bash scripts/install-wrk.sh
	scripts/bench_sqlite.sh

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
	rm -rf $(VENV) .venv-lnbits var reports .pytest_cache .hypothesis
