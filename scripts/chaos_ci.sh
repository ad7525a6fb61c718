#!/usr/bin/env bash
# Chaos CI: the money checks under injected faults, each against a real `payrail serve` on a
# freshly recreated PostgreSQL database; then proof that the checks can fail: the same chaos
# run in legacy mode (rollbackOnTimeout=false) must FAIL and name balance_rollback_failures.
# Exit 0 only if all of that holds. See docs/loadtest.md.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL="${PAYRAIL_CHAOS_PG_URL:-postgresql://postgres@127.0.0.1:5432/payrail_chaos}"
SCALE="${PAYRAIL_CHAOS_SCALE:-0.2}"         # 12 s of timeout_recovery, a 200-payout spike
REPORTS="${PAYRAIL_CHAOS_REPORTS:-reports/chaos}"
PYTHON="${PYTHON_BIN:-.venv/bin/python}"
# CI shares 2 cores between the server, PostgreSQL and the load generator, so timeout_recovery's
# k6 latency defaults (p95<500, p99<1000) are loosened to bounds that catch a hang; the burst
# scenarios' defaults are such bounds already. Money checks are never relaxed.
CI_LATENCY=(--threshold 'p95<3000' --threshold 'p99<10000')

started=$(date +%s)
fail() { echo "chaos CI FAILED: $*" >&2; exit 1; }

loadtest() {
  "$PYTHON" -m payrail.entrypoints.cli.app loadtest --start-server --database-url "$PG_URL" \
    --duration-scale "$SCALE" "$@"
}

echo "== creating $PG_URL"
"$PYTHON" -m payrail_tools.loadtest.pgadmin "$PG_URL" || fail "PostgreSQL is not reachable"

for scenario in timeout_recovery duplicate_detection spike_timeouts; do
  echo "== $scenario (duration scale $SCALE)"
  t0=$(date +%s)
  extra=()
  [ "$scenario" != timeout_recovery ] || extra=("${CI_LATENCY[@]}")  # the others: hang bounds
  loadtest --scenario "$scenario" --report "$REPORTS/$scenario" ${extra[@]+"${extra[@]}"} \
    || fail "$scenario did not pass (report: $REPORTS/$scenario/report.html)"
  echo "== $scenario passed in $(( $(date +%s) - t0 )) s"
done

echo "== timeout_recovery --legacy: must FAIL with balance_rollback_failures > 0"
t0=$(date +%s)
log="$REPORTS/timeout_recovery-legacy.log"
mkdir -p "$REPORTS"
set +e
loadtest --scenario timeout_recovery --legacy --report "$REPORTS/timeout_recovery-legacy" \
  "${CI_LATENCY[@]}" 2>&1 | tee "$log"
code=${PIPESTATUS[0]}
set -e
[ "$code" -ne 0 ] || fail "the legacy run PASSED: the checks cannot see charged-but-not-paid"
[ "$code" -eq 1 ] || fail "the legacy run could not run (exit $code): no verdict"
grep -q "FAIL threshold balance_rollback_failures==0 violated" "$log" \
  || fail "the legacy run failed, but not on balance_rollback_failures"
grep -q "FAIL invariant reconciliation clean" "$log" \
  || fail "the legacy run failed, but reconciliation did not report discrepancies"
echo "== legacy run failed as it must, in $(( $(date +%s) - t0 )) s"

echo "chaos CI passed in $(( $(date +%s) - started )) s (reports in $REPORTS)"
