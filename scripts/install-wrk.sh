#!/usr/bin/env bash
# wrk (Debian's package), the load generator of `make bench` and `make bench-sqlite`.
set -euo pipefail
command -v wrk >/dev/null && exit 0
apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
command -v wrk >/dev/null || { echo "wrk could not be installed (apt-get install wrk needs root)" >&2; exit 1; }
