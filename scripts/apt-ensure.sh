#!/usr/bin/env bash
# Usage: apt-ensure.sh COMMAND PACKAGE
# Install Debian's PACKAGE (through apt-install.sh) if COMMAND is missing, so `make test` has
# the tools its tests need. Without root the tests needing COMMAND skip locally and fail
# under CI=true.
set -euo pipefail
PATH="$PATH:/usr/sbin:/usr/local/sbin"
if command -v "$1" >/dev/null 2>&1; then
  exit 0
fi
bash "$(dirname "$0")/apt-install.sh" "$2"
command -v "$1" || echo "warning: $1 is still missing" >&2
