#!/usr/bin/env bash
# apt-install.sh PACKAGE...: install Debian packages for the test suite (root or passwordless
# sudo, Debian registry only). Without either, or without apt-get, it only warns: the tests
# needing them then skip locally and fail under CI=true. The packages' own services are not
# needed (tests start their own instances on their own ports).
set -euo pipefail
if [ "$(id -u)" = 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "warning: cannot install without root: apt-get install $*" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: this machine has no apt-get to install $*" >&2
  exit 0
fi
APT_LOCK_WAIT=(-o DPkg::Lock::Timeout=300)
$SUDO apt-get "${APT_LOCK_WAIT[@]}" update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get "${APT_LOCK_WAIT[@]}" install -y -qq \
  --no-install-recommends "$@" >/dev/null
echo "installed: $*"
