#!/usr/bin/env bash
# Install Chromium (Debian's chromium package) if it is missing, for the dashboard's browser
# test (tests/test_dashboard_browser.py). Playwright drives this system browser: its own
# browser download is not used. Only the Debian registry is used.
# Without root or passwordless sudo it only warns: the browser test then skips locally and
# fails under CI=true.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "warning: chromium is missing and cannot be installed without root:" \
       "apt-get install chromium" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: chromium is missing and this machine has no apt-get" >&2
  exit 0
fi
APT_LOCK_WAIT=(-o DPkg::Lock::Timeout=300)
$SUDO apt-get "${APT_LOCK_WAIT[@]}" update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get "${APT_LOCK_WAIT[@]}" install -y -qq \
  --no-install-recommends chromium >/dev/null
command -v chromium
