#!/usr/bin/env bash
# Install PgBouncer and HAProxy (Debian packages) if missing, for the deployment test
# (`make deploy-test`, docs/deployment.md) and tests/test_pgbouncer.py. PostgreSQL's server
# binaries (initdb, pg_ctl) are taken from PATH or /usr/lib/postgresql/*/bin; if neither has
# them, postgresql is installed too.
set -euo pipefail
PATH="$PATH:/usr/sbin:/usr/local/sbin"  # Debian puts pgbouncer and haproxy there
missing=()
command -v pgbouncer >/dev/null 2>&1 || missing+=(pgbouncer)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ]; then
  bash "$(dirname "$0")/apt-install.sh" "${missing[@]}"
fi
