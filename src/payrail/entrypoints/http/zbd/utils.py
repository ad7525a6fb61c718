"""ZBD's utilities: decode an invoice (payrail's own BOLT11 decoder) and the BTC/USD rate
(the operator's fixed rate, PAYRAIL_FX_FIXED: domain/fx.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from payrail.domain import errors, fx, invoices
from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.errors import read_json
from payrail.entrypoints.http.models import doc, query_param
from payrail.entrypoints.http.zbd import models
from payrail.entrypoints.http.zbd import translate as zbd
from payrail.entrypoints.http.zbd.common import body_object, ok, wallet_of, zbd_route
from payrail.support.clock import iso

DECODE_ERRORS: dict[int, tuple[str, ...]] = {400: ("INVALID_INVOICE",), 403: ("FORBIDDEN",)}


def decode(text: Any) -> dict[str, Any]:
    """The invoice as payrail reads it before paying one (signature verified)."""
    if text in (None, ""):
        raise errors.ValidationError(
            'The "invoice" property is required.', missingFields=["invoice"]
        )
    try:
        invoice = invoices.decode(text)
    except ValueError as exc:
        raise errors.InvalidInvoice(
            f"Could not decode the provided invoice: {exc}.", field="invoice"
        ) from None
    return zbd.decoded_invoice(invoice, iso(invoice.expires_at_ms))


def install(router: APIRouter, ctx: ApiContext) -> None:
    @router.post(
        "/decode-invoice",
        **doc(
            ok={200: (models.DecodedInvoice, "The invoice's fields")},
            errors=DECODE_ERRORS,
            body=models.DecodeBody,
            summary="ZBD: decode a BOLT11 invoice (as both SDKs call it)",
        ),
    )
    @zbd_route
    async def decode_post(request: Request) -> JSONResponse:
        await wallet_of(ctx, request)
        body = body_object(await read_json(request))
        return ok("Successfully decoded invoice.", decode(body.get("invoice")))

    @router.get(
        "/decode-invoice",
        **doc(
            ok={200: (models.DecodedInvoice, "The invoice's fields")},
            errors=DECODE_ERRORS | {400: ("VALIDATION_ERROR", "INVALID_INVOICE")},
            query=[query_param("invoice", "BOLT11", required=True)],
            summary="payrail extension: the same decode, the invoice in the query",
        ),
    )
    @zbd_route
    async def decode_get(request: Request) -> JSONResponse:
        await wallet_of(ctx, request)
        return ok("Successfully decoded invoice.", decode(request.query_params.get("invoice")))

    @router.get(
        "/btcusd",
        **doc(
            ok={200: (models.BtcUsd, "The rate: US dollars per bitcoin")},
            errors={403: ("FORBIDDEN",), 503: ("SERVICE_UNAVAILABLE",)},
            summary="ZBD: the BTC/USD rate (the operator's PAYRAIL_FX_FIXED)",
        ),
    )
    @zbd_route
    async def btcusd(request: Request) -> JSONResponse:
        await wallet_of(ctx, request)
        rate = fx.fixed_rate(ctx.settings.fx_fixed, ctx.rt.clock.now_ms())
        if rate is None:
            raise errors.ServiceUnavailable(
                "No BTC/USD rate is configured: the operator sets PAYRAIL_FX_FIXED (US dollars "
                "per bitcoin). payrail guesses no price."
            )
        data = {
            "btcUsdPrice": fx.plain(rate.usd_per_btc),
            "btcUsdTimestamp": str(rate.at_ms // 1000),
            "source": rate.source,
        }
        return ok("Successfully retrieved BTC USD price ticker information.", data)
