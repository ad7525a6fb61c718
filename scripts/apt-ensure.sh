#!/usr/bin/env bash
# Usage: apt-ensure.sh COMMAND PACKAGE
# Install Debian's PACKAGE if COMMAND is missing, so `make test` has the tools its tests need.
# Only the Debian registry is used. Without root or passwordless sudo (or without apt-get) it
# only warns: the tests that need COMMAND then skip locally and fail under CI=true.
set -euo pipefail
command_name="$1"
package="$2"
if command -v "$command_name" >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "warning: $command_name is missing and cannot be installed without root:" \
       "apt-get install $package" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: $command_name is missing and this machine has no apt-get" >&2
  exit 0
fi
APT_LOCK_WAIT=(-o DPkg::Lock::Timeout=300)
$SUDO apt-get "${APT_LOCK_WAIT[@]}" update -qq
# --no-install-recommends: the tool only. A package's service is not started in containers
# without systemd, and is not needed.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get "${APT_LOCK_WAIT[@]}" install -y -qq \
  --no-install-recommends "$package" >/dev/null
command -v "$command_name"
