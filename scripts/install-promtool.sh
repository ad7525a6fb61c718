#!/usr/bin/env bash
# Install promtool (Debian's prometheus package) if it is missing, so `make test` can check
# and unit-test ops/prometheus/alerts.yml. Only the Debian registry is used.
# Without root or passwordless sudo it only warns: tests/test_alert_rules.py then skips
# locally and fails under CI=true.
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "warning: promtool is missing and cannot be installed without root:" \
       "apt-get install prometheus" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: promtool is missing and this machine has no apt-get" >&2
  exit 0
fi
APT_LOCK_WAIT=(-o DPkg::Lock::Timeout=300)
$SUDO apt-get "${APT_LOCK_WAIT[@]}" update -qq
# --no-install-recommends: promtool only, not node-exporter and friends. The package's
# service is not started in containers without systemd, and is not needed.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get "${APT_LOCK_WAIT[@]}" install -y -qq \
  --no-install-recommends prometheus >/dev/null
command -v promtool
