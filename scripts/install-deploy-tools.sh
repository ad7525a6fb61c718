#!/usr/bin/env bash
# Install PgBouncer and HAProxy (Debian packages) if missing, for the deployment test
# (`make deploy-test`, docs/deployment.md) and tests/test_pgbouncer.py. PostgreSQL's server
# binaries (initdb, pg_ctl) are taken from PATH or /usr/lib/postgresql/*/bin; if neither has
# them, postgresql is installed too. Only the Debian registry is used.
# Without root or passwordless sudo it only warns: the tests then skip locally and fail
# under CI=true.
set -euo pipefail
missing=()
command -v pgbouncer >/dev/null 2>&1 || missing+=(pgbouncer)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "warning: ${missing[*]} missing and cannot be installed without root:" \
       "apt-get install ${missing[*]}" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: ${missing[*]} missing and this machine has no apt-get" >&2
  exit 0
fi
APT_LOCK_WAIT=(-o DPkg::Lock::Timeout=300)
$SUDO apt-get "${APT_LOCK_WAIT[@]}" update -qq
# The packages' own services are not needed (the test runs its own instances on its ports).
DEBIAN_FRONTEND=noninteractive $SUDO apt-get "${APT_LOCK_WAIT[@]}" install -y -qq \
  --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
