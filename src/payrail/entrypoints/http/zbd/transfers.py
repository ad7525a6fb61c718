"""POST /v0/internal-transfer: ZBD's move between two project wallets of one owner.

ZBD knows which projects belong to one developer account; payrail has no owner of projects
but its operator, and a project key proves only its own project. So a transfer needs both
keys: the sender's in `apikey`, as ZBD asks, and the receiver's in `Receiver-Apikey`
(docs/zbd.md, "Internal transfers"). Holding both keys is holding both wallets.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from payrail.domain import errors
from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.errors import mark_replayed, read_json
from payrail.entrypoints.http.models import doc, header_param
from payrail.entrypoints.http.zbd import models
from payrail.entrypoints.http.zbd import translate as zbd
from payrail.entrypoints.http.zbd.common import (
    IDEMPOTENCY_HEADER,
    body_object,
    mark_retry_safe,
    ok,
    wallet_of,
    zbd_route,
)
from payrail.services import internal_transfers, projects
from payrail.support.clock import iso

RECEIVER_KEY_HEADER = "Receiver-Apikey"


def install(router: APIRouter, ctx: ApiContext) -> None:
    @router.post(
        "/internal-transfer",
        **doc(
            ok={200: (models.InternalTransfer, "Done: both balances changed in one transaction")},
            errors={
                400: ("VALIDATION_ERROR", "INVALID_AMOUNT", "INSUFFICIENT_BALANCE"),
                403: ("FORBIDDEN",),
                404: ("PROJECT_NOT_FOUND",),
                422: ("IDEMPOTENCY_KEY_REUSED",),
            },
            body=models.InternalTransferBody,
            body_example={"amount": "10000000", "receiverWalletId": "studio_42"},
            headers=[
                header_param(
                    RECEIVER_KEY_HEADER,
                    "payrail: the receiving project's API key (both keys, both wallets).",
                    required=True,
                ),
                header_param("Idempotency-Key", "payrail: a retry with it moves nothing more."),
            ],
            summary="ZBD: move sats between two project wallets (needs both keys)",
        ),
    )
    @zbd_route
    async def internal_transfer(request: Request) -> JSONResponse:
        sender = await wallet_of(ctx, request)
        body = body_object(await read_json(request))
        receiver = body.get("receiverWalletId")
        if not isinstance(receiver, str) or not receiver or len(receiver) > 64:
            raise errors.ValidationError(
                'The "receiverWalletId" property (a project id) is required.',
                field="receiverWalletId",
            )
        amount = zbd.sats_of_msat(body.get("amount"))
        internal_transfers.check_amount(amount)
        await _require_receiver_key(ctx, request, receiver)
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is not None:
            mark_retry_safe(request)
        done = await internal_transfers.transfer(ctx.rt, sender, receiver, amount, key)
        at = iso(done.created_at_ms)
        data = {
            "id": done.id,
            "senderWalletId": done.sender,
            "receiverWalletId": done.receiver,
            "userId": None,
            "sendTxId": done.id,  # one ledger transfer is both sides
            "receiveTxId": done.id,
            "status": zbd.TRANSFER_STATUS_COMPLETED,
            "amount": zbd.msat(done.amount_sats),
            "createdAt": at,
            "updatedAt": at,
            "senderBalance": zbd.msat(done.sender_balance),
            "receiverBalance": zbd.msat(done.receiver_balance),
        }
        return mark_replayed(ok("Internal Transfer done.", data), done.replay)


async def _require_receiver_key(ctx: ApiContext, request: Request, receiver: str) -> None:
    key = request.headers.get(RECEIVER_KEY_HEADER.lower())
    owner = await projects.project_for_key(ctx.rt, key) if key else None
    if owner is None or not hmac.compare_digest(owner.encode(), receiver.encode()):
        raise errors.Forbidden(
            "Error processing transfer: an internal transfer needs the receiving project's API "
            f"key in the {RECEIVER_KEY_HEADER} header, besides the sender's in apikey (payrail "
            "has no account that owns both projects; holding both keys is owning both).",
            header=RECEIVER_KEY_HEADER,
        )
