#!/usr/bin/env bash
# A real LNbits for the tests (tests/lnbits_kit.py starts and stops it): LNbits 1.6.2 from PyPI
# in its own virtualenv, run on 127.0.0.1 with FakeWallet, which settles payments between its
# own wallets internally. Offline: every outbound fetch of LNbits is turned off.
#
#   scripts/lnbits.sh install                 create .venv-lnbits (once; a no-op afterwards)
#   scripts/lnbits.sh run PORT DATA_DIR       run LNbits in the foreground
#   scripts/lnbits.sh fund DATA_DIR WALLET_ID SATS   credit a wallet (LNbits' own service)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${PAYRAIL_LNBITS_VENV:-$ROOT/.venv-lnbits}"
PYTHON="${PYTHON:-python3}"

LOCK="$ROOT/requirements/lnbits.lock"

installed() {
  # The venv must hold exactly the current lock (a changed lock reinstalls).
  cmp -s "$LOCK" "$VENV/.installed-lock" || return 1
  # Importing LNbits writes an auth key into its data folder: point it at a scratch one.
  local scratch
  scratch="$(mktemp -d)"
  [ -x "$VENV/bin/lnbits" ] \
    && LNBITS_DATA_FOLDER="$scratch" "$VENV/bin/python" -c "import lnbits.core.services" 2>/dev/null
  local ok=$?
  rm -rf "$scratch"
  return $ok
}

settings() {
  local data="$1"
  export LNBITS_DATA_FOLDER="$data"
  export LNBITS_ADMIN_UI=false  # settings come from this environment, not the database
  export LNBITS_BACKEND_WALLET_CLASS=FakeWallet
  export LNBITS_RESERVE_FEE_MIN=0 LNBITS_RESERVE_FEE_PERCENT=0  # exact sums in the tests
  export LNBITS_SERVICE_FEE=0
  export LNBITS_PRICE_AGGREGATOR_ENABLED=false
  export LNBITS_EXCHANGE_RATE_PROVIDERS='[]'
  export LNBITS_EXTENSIONS_MANIFESTS='[]'
  export LNBITS_WASM_EXTENSIONS_MANIFESTS='[]'
  export LNBITS_RATE_LIMIT_NO=1000000  # the default 200/minute per IP throttles a test run
  export LNBITS_ALLOW_NEW_ACCOUNTS=true
  export LNBITS_FUNDING_SOURCE_PAY_INVOICE_WAIT_SECONDS=5
  export LNBITS_SITE_TITLE=payrail-tests
  # Invoice webhooks (payrail's deposits) go to receivers on loopback in the tests.
  export LNBITS_CALLBACK_URL_RULES='[]' LNBITS_CALLBACK_ALLOW_PRIVATE_IPS=true
  export DEBUG=false
}

package_parent() {
  "$VENV/bin/python" -c 'import lnbits, os; print(os.path.dirname(os.path.dirname(lnbits.__file__)))'
}

case "${1:-}" in
  install)
    if ! installed; then
      rm -rf "$VENV"
      "$PYTHON" -m venv "$VENV"
      # Exactly what requirements/lnbits.lock pins, checked against its hashes (make lock
      # refreshes it from requirements/lnbits.in: lnbits==1.6.2 and 'bitstring<5').
      # --no-deps: the lock is complete (pip cannot match an extra such as pydantic[email]
      # against a hashed pin otherwise).
      "$VENV/bin/pip" install --quiet --require-hashes --no-deps -r "$LOCK"
      cp "$LOCK" "$VENV/.installed-lock"
    fi
    installed
    ;;
  run)
    port="$2" data="$3"
    mkdir -p "$data"
    settings "$data"
    # LNbits mounts lnbits/static relative to the working directory: run from its parent.
    cd "$(package_parent)"
    exec "$VENV/bin/lnbits" --host 127.0.0.1 --port "$port"
    ;;
  fund)
    data="$2" wallet="$3" sats="$4"
    settings "$data"
    cd "$(package_parent)"
    exec "$VENV/bin/python" - "$wallet" "$sats" <<'PY'
import asyncio, sys
from lnbits.core.crud import get_wallet
from lnbits.core.services import update_wallet_balance
from lnbits.db import Database

async def main(wallet_id: str, sats: int) -> None:
    wallet = await get_wallet(wallet_id)
    assert wallet is not None, f"no wallet {wallet_id}"
    await update_wallet_balance(wallet, sats)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
PY
    ;;
  *)
    echo "usage: $0 install | run PORT DATA_DIR | fund DATA_DIR WALLET_ID SATS" >&2
    exit 2
    ;;
esac
