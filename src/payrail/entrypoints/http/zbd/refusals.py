"""ZBD endpoints payrail does not offer: each answers ZBD's error shape with a code saying so.

Either the endpoint has no meaning for a self-hosted service (ZBD's own IP lists, region
checks by IP, ZBD user ids, ZBD's vouchers and e-mail payments), or payrail has no such
feature yet. The answers are 501 with `x-should-retry: false`: no retry can change them.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from payrail.entrypoints.http.context import ApiContext
from payrail.entrypoints.http.errors import envelope
from payrail.entrypoints.http.models import Empty, doc
from payrail.entrypoints.http.zbd.common import SHOULD_RETRY_HEADER, wallet_of, zbd_route

NOT_OFFERED = "ZBD_ENDPOINT_NOT_OFFERED"
NOT_BUILT = "ZBD_ENDPOINT_NOT_BUILT"
_NO_MEANING = "payrail is self-hosted: it has no such ZBD service."
# (method, path, why): ZBD's paths with no payrail meaning.
ENDPOINTS: list[tuple[str, str, str, str]] = [
    ("GET", "/prod-ips", NOT_OFFERED, "ZBD's production IP list: " + _NO_MEANING),
    ("GET", "/is-supported-region/{ip}", NOT_OFFERED, "ZBD's region check: " + _NO_MEANING),
    ("GET", "/user-id/gamertag/{gamertag}", NOT_OFFERED, "ZBD user ids: " + _NO_MEANING),
    ("GET", "/gamertag/user-id/{user_id}", NOT_OFFERED, "ZBD user ids: " + _NO_MEANING),
    (
        "POST",
        "/gamertag/charges",
        NOT_OFFERED,
        "Charges from a ZBD user's gamertag: payrail's gamertags are its own directory of "
        "where to pay players, not ZBD accounts that can be charged.",
    ),
    (
        "POST",
        "/ln-address/fetch-charge",
        NOT_OFFERED,
        "payrail fetches a Lightning Address's invoice only to pay it: use "
        "POST /v0/ln-address/send-payment.",
    ),
    ("POST", "/static-charges", NOT_OFFERED, "Static charges are not offered by payrail."),
    ("GET", "/static-charges/{charge_id}", NOT_OFFERED, "Static charges are not offered."),
    ("PATCH", "/static-charges/{charge_id}", NOT_OFFERED, "Static charges are not offered."),
    ("POST", "/email/send-payment", NOT_OFFERED, "E-mail payments: " + _NO_MEANING),
    ("POST", "/vouchers", NOT_OFFERED, "ZBD vouchers: " + _NO_MEANING),
    ("GET", "/vouchers/{voucher_id}", NOT_OFFERED, "ZBD vouchers: " + _NO_MEANING),
]


def install(router: APIRouter, ctx: ApiContext) -> None:
    for method, path, code, why in ENDPOINTS:
        _refusal(router, ctx, method, path, code, why)


def _refusal(
    router: APIRouter, ctx: ApiContext, method: str, path: str, code: str, why: str
) -> None:
    async def refuse(request: Request) -> JSONResponse:
        await wallet_of(ctx, request)
        response = envelope(False, why, {"error": code}, 501)
        response.headers[SHOULD_RETRY_HEADER] = "false"
        return response

    refuse.__name__ = f"zbd_not_offered_{method.lower()}_{path.strip('/').replace('/', '_')}"
    router.api_route(
        path,
        methods=[method],
        **doc(
            ok={200: (Empty, "Never: this endpoint is refused")},
            errors={403: ("FORBIDDEN",), 501: (code,)},
            query=[  # the path's own parameters, documented though never read
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in re.findall(r"{(\w+)}", path)
            ]
            or None,
            summary="ZBD: not built in payrail yet (501)"
            if code == NOT_BUILT
            else "ZBD: not offered by payrail (501)",
        ),
        description=why,
    )(zbd_route(refuse))
