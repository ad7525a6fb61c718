#!/usr/bin/env bash
# Install promtool (Debian's prometheus package) if it is missing, so `make test` can check
# and unit-test ops/prometheus/alerts.yml (tests/test_alert_rules.py).
exec bash "$(dirname "$0")/apt-ensure.sh" promtool prometheus
