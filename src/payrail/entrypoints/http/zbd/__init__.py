"""The ZBD-compatible way in: `/v0/...`, ZBD's payments API on payrail's own services.

A studio that scripts against ZBD changes one thing, the base URL its SDK is given
(docs/zbd.md). Every route translates; the payout engine, the ledger and the services decide.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.zbd import (
    charges,
    payments,
    refusals,
    transfers,
    utils,
    wallet,
    withdrawals,
)
from payrail.entrypoints.http.zbd.common import ZBD_PREFIX

TAG = "ZBD-compatible (/v0)"


def install(app: FastAPI, ctx: ApiContext) -> None:
    router = APIRouter(prefix=ZBD_PREFIX, tags=[TAG])
    wallet.install(router, ctx)
    payments.install(router, ctx)
    utils.install(router, ctx)
    transfers.install(router, ctx)
    charges.install(router, ctx)
    withdrawals.install(router, ctx)
    refusals.install(router, ctx)
    app.include_router(router)
