#!/usr/bin/env bash
# Install promtool (Debian's prometheus package) if it is missing, so `make test` can check
# and unit-test ops/prometheus/alerts.yml. Only the Debian registry is used (apt-install.sh);
# without root it only warns: tests/test_alert_rules.py then skips locally and fails under
# CI=true. --no-install-recommends: promtool only, not node-exporter and friends.
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
bash "$(dirname "$0")/apt-install.sh" prometheus
command -v promtool
