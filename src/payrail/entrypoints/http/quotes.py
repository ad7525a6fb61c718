"""HTTP route of quotes: price a fiat amount in sats (services/quotes.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.errors import envelope, read_json
from payrail.entrypoints.http.models import doc
from payrail.entrypoints.http.models.quotes import Quote, QuoteRequest
from payrail.services import quotes


def install(api: APIRouter, ctx: ApiContext) -> None:
    rt = ctx.rt

    @api.post(
        "/quotes",
        **doc(
            ok={201: (Quote, "Priced: pay it with quoteId before expiresAt")},
            errors={
                400: ("VALIDATION_ERROR", "INVALID_CURRENCY", "INVALID_AMOUNT"),
                403: ("FORBIDDEN",),
                404: ("PROJECT_NOT_FOUND",),
                503: ("RATE_UNAVAILABLE",),
            },
            body=QuoteRequest,
            body_example={"projectId": "project_test_001", "currency": "USD", "amount": "0.10"},
            summary="Price a fiat amount in sats (a quote a payout pays with quoteId)",
        ),
    )
    async def create_quote(request: Request) -> JSONResponse:
        who = await ctx.principal(request)
        project_id, currency, amount = quotes.parse_new_quote(await read_json(request))
        who.require(project_id)
        row = await quotes.create_quote(rt, project_id, currency, amount)
        return envelope(True, "Quote created", quotes.view(row), 201)
