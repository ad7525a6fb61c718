#!/usr/bin/env bash
# Install what the high-availability test needs (`make ha-test`, docs/deployment.md): the
# deployment test's parts (scripts/install-deploy-tools.sh: PgBouncer, HAProxy, PostgreSQL's
# server binaries), then Patroni with its etcd client library and etcd itself, all Debian
# packages. Debian's policy-rc.d (or the absence of systemd) keeps their services from
# starting: the test runs its own etcd and Patroni members on its own ports.
set -euo pipefail
PATH="$PATH:/usr/sbin:/usr/local/sbin"
here="$(dirname "$0")"
bash "$here/install-deploy-tools.sh"
missing=()
command -v patroni >/dev/null 2>&1 || missing+=(patroni)
command -v patronictl >/dev/null 2>&1 || missing+=(patroni)
/usr/bin/python3 -c 'import etcd' >/dev/null 2>&1 || missing+=(python3-etcd)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v pg_rewind >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_rewind >/dev/null 2>&1 \
  || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  # sort -u: patroni may be listed twice (patroni and patronictl come together)
  bash "$here/apt-install.sh" $(printf '%s\n' "${missing[@]}" | sort -u)
fi
