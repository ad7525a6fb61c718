"""ZBD's payouts on payrail's one payout engine: gamertag, Lightning Address and invoice
payments, and their look-ups.

Each route translates ZBD's body into the body of `POST /api/v1/payouts`, validates it with the
same parser and calls the same service (services/payouts.create_payout) as that route: the
fee, limits, rate limit, recipient guard, idempotency and saga are the engine's, never this
module's. The answer is the engine's outcome (entrypoints/http/payouts.payout_answer_parts)
in ZBD's object shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from payrail.domain import errors, invoices
from payrail.domain.money import AMOUNT_MAX_SATS, AMOUNT_MIN_SATS
from payrail.domain.payouts import (
    DESCRIPTION_MAX_CHARS,
    IDEMPOTENCY_KEY_MAX_CHARS,
    parse_payout_request,
)
from payrail.domain.recipients import parse_lightning_address, parse_node_pubkey, rate_key
from payrail.entrypoints.http.auth import Principal
from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.errors import mark_replayed, read_json
from payrail.entrypoints.http.models import doc, header_param
from payrail.entrypoints.http.payouts import payout_answer_parts, visible_payout
from payrail.entrypoints.http.zbd import models
from payrail.entrypoints.http.zbd import translate as zbd
from payrail.entrypoints.http.zbd.common import (
    body_object,
    failed,
    idempotency_key,
    ok,
    optional_text,
    wallet_of,
    zbd_route,
)
from payrail.services import callback_urls, destinations, payouts

DONE = "Payment done."
PROCESSING = "Payment processing."
KEY_HEADER = [
    header_param(
        "Idempotency-Key",
        "payrail extension: one key per logical payment; a retry with it pays once.",
        IDEMPOTENCY_KEY_MAX_CHARS,
    )
]
# What a payout request may be refused with, on every route that creates one.
CREATE_ERRORS: dict[int, tuple[str, ...]] = {
    400: (
        "VALIDATION_ERROR",
        "INVALID_AMOUNT",
        "DESCRIPTION_TOO_LONG",
        "INVALID_CALLBACK_URL",
        "INVALID_INVOICE",
        "INSUFFICIENT_BALANCE",
        "PAYOUT_EXPIRED",
    ),
    403: ("FORBIDDEN", "RECIPIENT_SUSPENDED", "PAYOUT_LIMIT_EXCEEDED"),
    404: ("PROJECT_NOT_FOUND", "RECIPIENT_NOT_FOUND"),
    409: ("INTERNAL_ID_TAKEN", "INVOICE_ALREADY_USED"),
    422: ("IDEMPOTENCY_KEY_REUSED", "DESTINATION_UNSUPPORTED"),
    429: (
        "RATE_LIMIT_EXCEEDED",
        "RECIPIENT_TEMPORARILY_BLOCKED",
        "PLAYER_DAILY_LIMIT",
        "PROJECT_DAILY_LIMIT",
    ),
    502: ("PAYMENT_FAILED", "RECIPIENT_INVOICE_INVALID", "RECIPIENT_UNREACHABLE"),
    504: ("GATEWAY_TIMEOUT",),
}
LOOKUP_ERRORS: dict[int, tuple[str, ...]] = {403: ("FORBIDDEN",), 404: ("PAYOUT_NOT_FOUND",)}


def install(router: APIRouter, ctx: ApiContext) -> None:
    rt = ctx.rt

    async def create(
        request: Request, wallet: str, fields: dict[str, Any], keysend_to: str | None = None
    ) -> Any:
        """The payout of `POST /api/v1/payouts` with these fields, in this wallet.

        keysend_to: a node key. payrail's API has no direct keysend field, so the request is
        parsed as a payout to the key's rate-limit name (the same rules, in the same order)
        and then addressed to the node key, as a directory entry's keysend payout is."""
        key = idempotency_key(ctx, request, fields.get("internalId"))
        refusal = await callback_urls.refusal_at_creation(ctx.settings, fields.get("callbackUrl"))
        req = parse_payout_request(
            fields | {"projectId": wallet}, key, callback_url_refusal=refusal
        )
        if keysend_to is not None:
            req = dataclasses.replace(
                req, destination_kind=destinations.Kind.KEYSEND, destination=keysend_to
            )
        return await payouts.create_payout(rt, req)

    @router.post(
        "/gamertag/send-payment",
        **doc(
            ok={200: (models.GamertagPayment, "Paid (settled) or in flight (processing)")},
            errors=CREATE_ERRORS,
            body=models.GamertagPaymentBody,
            body_example={"gamertag": "player1", "amount": "1000000", "description": "GG"},
            headers=KEY_HEADER,
            summary="ZBD: pay a gamertag (payrail's recipient directory)",
        ),
    )
    @zbd_route
    async def send_to_gamertag(request: Request) -> JSONResponse:
        wallet = await wallet_of(ctx, request)
        body = body_object(await read_json(request))
        fields = {
            "gamertag": body.get("gamertag"),
            "amount": zbd.sats_of_msat(body.get("amount")),
            "description": optional_text(body, "description"),
            "internalId": optional_text(body, "internalId"),
        }
        return answer(await create(request, wallet, fields), zbd.gamertag_payment)

    @router.get(
        "/gamertag/transaction/{transaction_id}",
        **doc(ok={200: (models.GamertagTransaction, "The payment")}, errors=LOOKUP_ERRORS),
    )
    @zbd_route
    async def gamertag_transaction(transaction_id: str, request: Request) -> JSONResponse:
        view = await visible(ctx, request, transaction_id)
        if view["gamertag"] is None:  # a payout to an address or invoice, not to a gamertag
            raise errors.PayoutNotFound(f"No gamertag payment with id {transaction_id}.")
        return ok("Fetched charge.", zbd.gamertag_transaction(view))

    @router.post(
        "/ln-address/send-payment",
        **doc(
            ok={200: (models.Payment, "Paid (completed) or in flight (processing)")},
            errors=CREATE_ERRORS,
            body=models.LnAddressPaymentBody,
            body_example={"lnAddress": "player1@example.com", "amount": "1000000"},
            headers=KEY_HEADER,
            summary="ZBD: pay a Lightning Address",
        ),
    )
    @zbd_route
    async def send_to_address(request: Request) -> JSONResponse:
        wallet = await wallet_of(ctx, request)
        body = body_object(await read_json(request))
        address = body.get("lnAddress") or body.get("lnaddress")
        if address in (None, ""):
            raise errors.ValidationError(
                'The "lnAddress" property is required.', missingFields=["lnAddress"]
            )
        fields = {
            "lightningAddress": address,
            "amount": zbd.sats_of_msat(body.get("amount")),
            "description": optional_text(body, "comment"),
            "internalId": optional_text(body, "internalId"),
            "callbackUrl": optional_text(body, "callbackUrl"),
        }
        return answer(await create(request, wallet, fields), zbd.payment)

    @router.post(
        "/payments",
        **doc(
            ok={200: (models.Payment, "Paid (completed) or in flight (processing)")},
            errors=CREATE_ERRORS,
            body=models.PaymentBody,
            body_example={"invoice": "lnbc10u1…", "description": "Reward"},
            headers=KEY_HEADER,
            summary="ZBD: pay a BOLT11 invoice",
        ),
    )
    @zbd_route
    async def pay_invoice(request: Request) -> JSONResponse:
        wallet = await wallet_of(ctx, request)
        body = body_object(await read_json(request))
        text = body.get("invoice")
        if text in (None, ""):
            raise errors.ValidationError(
                'The "invoice" property is required.', missingFields=["invoice"]
            )
        fields = {
            "invoice": text,
            "amount": _invoice_amount_sats(text, body.get("amount")),
            "description": optional_text(body, "description"),
            "internalId": optional_text(body, "internalId"),
            "callbackUrl": optional_text(body, "callbackUrl"),
        }
        return answer(await create(request, wallet, fields), zbd.payment)

    @router.get(
        "/ln-address/validate/{address}",
        **doc(
            ok={200: (models.LnAddressValidation, "A Lightning Address: its pay parameters")},
            errors={
                400: ("VALIDATION_ERROR",),
                403: ("FORBIDDEN",),
                502: ("RECIPIENT_INVOICE_INVALID", "RECIPIENT_UNREACHABLE"),
            },
            summary="ZBD: resolve a Lightning Address without paying it",
        ),
    )
    @zbd_route
    async def validate_address(address: str, request: Request) -> JSONResponse:
        await wallet_of(ctx, request)
        value = parse_lightning_address(address, "address")
        kind = destinations.Kind.LIGHTNING_ADDRESS
        if destinations.sandbox_address(rt, kind, value):  # paid by name: no LNURL service
            metadata: dict[str, Any] = {
                "tag": "payRequest",
                "minSendable": AMOUNT_MIN_SATS * zbd.MSAT_PER_SAT,
                "maxSendable": AMOUNT_MAX_SATS * zbd.MSAT_PER_SAT,
                "commentAllowed": DESCRIPTION_MAX_CHARS,
                "callback": None,
                "metadata": None,
                "sandbox": True,
            }
        else:
            metadata = await destinations.pay_parameters(rt, kind, value)
        return ok("Lightning Address is valid.", {"valid": True, "metadata": metadata})

    @router.post(
        "/keysend-payment",
        **doc(
            ok={200: (models.Keysend, "Paid, or in flight")},
            errors=CREATE_ERRORS,
            body=models.KeysendBody,
            body_example={"amount": "1000000", "pubkey": "02" + "ab" * 32},
            headers=KEY_HEADER,
            summary="ZBD: pay a node public key (keysend), where the backend can",
        ),
    )
    @zbd_route
    async def keysend(request: Request) -> JSONResponse:
        wallet = await wallet_of(ctx, request)
        body = body_object(await read_json(request))
        pubkey = parse_node_pubkey(body.get("pubkey"), "pubkey")
        if body.get("tlvRecords"):
            raise errors.ValidationError(
                "payrail's keysend payments carry no custom TLV records: send tlvRecords "
                "empty or leave it out.",
                field="tlvRecords",
            )
        fields = {
            "gamertag": rate_key(pubkey),
            "amount": zbd.sats_of_msat(body.get("amount")),
            "callbackUrl": optional_text(body, "callbackUrl"),
        }
        return answer(await create(request, wallet, fields, keysend_to=pubkey), zbd.keysend)

    @router.get(
        "/payments/{payment_id}",
        **doc(ok={200: (models.Payment, "The payment")}, errors=LOOKUP_ERRORS),
    )
    @zbd_route
    async def get_payment(payment_id: str, request: Request) -> JSONResponse:
        return ok("Fetched Payment.", zbd.payment(await visible(ctx, request, payment_id)))


async def visible(ctx: ApiContext, request: Request, payout_id: str) -> dict[str, Any]:
    """The payout of this wallet (another wallet's is a 404, as in payrail's API)."""
    wallet = await wallet_of(ctx, request)
    row = await visible_payout(ctx, Principal(admin=False, project_id=wallet), payout_id)
    return payouts.view(row)


def _invoice_amount_sats(text: Any, amount: Any) -> Any:
    """The payout amount of an invoice payment: ZBD's `amount` if given, else the invoice's.

    payrail pays an invoice for its exact amount only (an amountless one is refused by the
    payout rules), so the invoice's own amount is what a ZBD client that sends none means."""
    if amount not in (None, ""):
        return zbd.sats_of_msat(amount)
    try:
        invoice = invoices.decode(text)
    except ValueError as exc:
        raise errors.InvalidInvoice(
            f"Could not decode the provided invoice: {exc}.", field="invoice"
        ) from None
    if invoice.amount_msat is None:
        raise errors.InvalidInvoice(
            "The invoice has no amount; payrail pays only invoices for an exact amount.",
            field="invoice",
        )
    return zbd.sats_of_msat(invoice.amount_msat, "invoice amount")


def answer(outcome: payouts.CreateOutcome, shape: Callable[[dict], dict]) -> JSONResponse:
    """The engine's outcome in ZBD's shape: paid or in flight is a success; a payout that ended
    unpaid (its reservation released) is ZBD's error shape with the payment in `data`."""
    success, message, data, status = payout_answer_parts(outcome)
    body = shape(data)
    if not success:
        response = failed(message, body, data["error"], status)
    elif data["status"] == "expired":
        response = failed(message, body, "PAYOUT_EXPIRED", 400)
    else:
        response = ok(DONE if data["status"] == "completed" else PROCESSING, body)
    return mark_replayed(response, outcome.replay)  # `Idempotent-Replayed: true`, as /api/v1
