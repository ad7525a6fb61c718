#!/usr/bin/env bash
# The SQLite default at full load: one `payrail serve` process on a fresh SQLite file, 10
# projects funded with 500,000,000 sats each, wrk POSTing payouts (scripts/bench/payout.lua:
# unique gamertags and Idempotency-Keys) at each connection count, then `payrail reconcile`.
# It prints wrk's line per level and the server's CPU per payout; exits non-zero if the
# reconciliation is not clean. Installs wrk with apt-get when it is missing.
#
# Usage: scripts/bench_sqlite.sh [SECONDS=15] [CONNECTIONS="10 50"] [PORT=3903]
#        PAYRAIL_SQLITE_SYNCHRONOUS=NORMAL scripts/bench_sqlite.sh    # the other durability
set -euo pipefail
secs=${1:-15}; conns=${2:-10 50}; port=${3:-3903}
root=$(cd "$(dirname "$0")/.." && pwd)
V=$root/.venv/bin
command -v wrk >/dev/null || { apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }; }
work=$(mktemp -d /tmp/payrail-bench-sqlite.XXXXXX)
admin=bench_admin_key_0123456789abcdef
export PAYRAIL_DATABASE_URL=sqlite:///$work/bench.db PAYRAIL_ADMIN_KEY=$admin \
  PAYRAIL_PORT=$port PAYRAIL_MODE=sandbox PAYRAIL_HOST=127.0.0.1
base=http://127.0.0.1:$port
setsid "$V/payrail" serve --log-level warning >"$work/serve.log" 2>&1 </dev/null &
server=$!
trap 'kill -- -$server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -sf -o /dev/null "$base/health" && break; sleep 0.3; done
for i in $(seq 0 9); do
  curl -sf -o /dev/null -X POST "$base/api/v1/projects" -H "apikey: $admin" \
    -H 'content-type: application/json' -d "{\"id\":\"prj$i\",\"name\":\"prj$i\"}"
  for _ in 1 2 3 4 5; do
    curl -sf -o /dev/null -X POST "$base/api/v1/projects/prj$i/fund" -H "apikey: $admin" \
      -H 'content-type: application/json' -d '{"amount":100000000}'
  done
done
pid=$(pgrep -P "$server" | head -1 || true); pid=${pid:-$server}
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
echo "SQLite default, 1 server process, synchronous=${PAYRAIL_SQLITE_SYNCHRONOUS:-FULL}, ${secs}s per level"
for c in $conns; do
  before=$(ticks)
  line=$(APIKEY=$admin wrk -t2 -c"$c" -d"${secs}s" -s "$root/scripts/bench/payout.lua" "$base" | grep '^wrk:')
  after=$(ticks)
  requests=$(echo "$line" | awk '{print $2}')
  cpu=$(awk -v t=$((after - before)) -v n="$requests" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%.2f", n ? t * 1000 / hz / n : 0 }')
  echo "c=$c $line, server CPU ${cpu} ms/payout"
done
sleep 3  # let the last settlements commit
"$V/payrail" reconcile | tail -n 1
