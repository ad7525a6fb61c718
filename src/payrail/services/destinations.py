"""Where a payout's money goes: resolve the request's destination before anything is reserved.

create_payout calls `resolve` first, outside any transaction (it may call the network):

    gamertag          → the project's directory → one of the kinds below (suspended: 403);
                        not registered: 404, or the simulated node pays it by name (sandbox)
    lightningAddress  → LUD-16: GET https://domain/.well-known/lnurlp/name → LUD-06 below
    lnurl             → LUD-06: GET the payRequest; check tag, min/maxSendable, metadata;
                        GET callback?amount=<msat>; check the invoice it returns
    invoice           → decode and check (amount, network, expiry)
    nodePubkey        → keysend, if the backend can

The invoice is then stored on the payout row in the reservation's transaction, with its
payment hash, and is the only invoice that payout is ever paid with: `backend_destination`
rebuilds the destination from the row for every send and status question.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy.engine import RowMapping

from payrail import __version__
from payrail.bootstrap import Runtime
from payrail.domain import errors, invoices
from payrail.domain.payouts import PayoutRequest
from payrail.domain.recipients import RecipientKind, decode_lnurl, lightning_address_url, rate_key
from payrail.lightning.backend import Destination, DestinationKind
from payrail.services import callback_urls, recipients
from payrail.services.callbacks import _pinned, _tls

LNURL_BODY_MAX_BYTES = 64 * 1024  # a payRequest or an invoice answer is a few KB
METADATA_MAX_CHARS = 16 * 1024


class Kind:
    """payouts.destination_kind values."""

    GAMERTAG = "gamertag"  # not in the directory: the simulated node pays it by name
    LIGHTNING_ADDRESS = "lightning_address"
    LNURL = "lnurl"
    INVOICE = "invoice"
    KEYSEND = "keysend"


_DIRECTORY_KIND = {
    RecipientKind.LIGHTNING_ADDRESS.value: Kind.LIGHTNING_ADDRESS,
    RecipientKind.LNURL.value: Kind.LNURL,
    RecipientKind.NODE_PUBKEY.value: Kind.KEYSEND,
}


@dataclass(frozen=True)
class Resolved:
    kind: str
    destination: str | None  # the address, LNURL, node key or gamertag it was resolved from
    invoice: invoices.Invoice | None

    def columns(self) -> dict[str, Any]:
        """The payout row's destination columns, written in the reservation's insert."""
        return {
            "destination_kind": self.kind,
            "destination": self.destination,
            "invoice": self.invoice.bolt11 if self.invoice else None,
            "payment_hash": self.invoice.payment_hash if self.invoice else None,
        }


def sandbox_gamertag(gamertag: str) -> Resolved:
    """A gamertag the simulated node pays by name (sandbox, not in the directory)."""
    return Resolved(Kind.GAMERTAG, gamertag, None)


def view(row: RowMapping) -> dict[str, Any]:
    """The payout's destination fields in its public object."""
    kind = row["destination_kind"] or Kind.GAMERTAG
    # A payout to an address or invoice keeps its rate-limit key in the gamertag column.
    direct = kind == Kind.INVOICE or (
        kind in (Kind.LIGHTNING_ADDRESS, Kind.KEYSEND)
        and row["gamertag"] == rate_key(row["destination"])
    )
    return {
        "gamertag": None if direct else row["gamertag"],
        "destinationKind": kind,
        "lightningAddress": row["destination"] if kind == Kind.LIGHTNING_ADDRESS else None,
        "invoice": row["invoice"],
        "paymentHash": row["payment_hash"],
    }


def backend_destination(row: RowMapping) -> Destination:
    """The destination of a payout's every send and status question, from its row only."""
    if row["invoice"]:
        return Destination.to_invoice(row["invoice"], row["payment_hash"])
    if row["destination_kind"] == Kind.KEYSEND:
        return Destination.keysend(row["destination"])
    return Destination.sandbox(row["gamertag"])


UNREAD: Any = object()  # resolve's `directory`: not read yet


async def resolve(rt: Runtime, req: PayoutRequest, directory: Any = UNREAD) -> Resolved:
    """The payout's destination, invoice fetched and checked; raises before any charge.

    directory: the gamertag's directory entry (or None) when the caller read it already."""
    kinds = rt.node.kinds
    if req.destination_kind == Kind.INVOICE:
        assert req.destination is not None
        return Resolved(Kind.INVOICE, None, _checked_invoice(rt, req, req.destination))
    if req.destination_kind in (Kind.LIGHTNING_ADDRESS, Kind.LNURL):
        assert req.destination is not None
        return await _via_lnurl(rt, req, req.destination_kind, req.destination)
    if req.destination_kind == Kind.KEYSEND:  # a node key given directly (ZBD's keysend)
        assert req.destination is not None
        if DestinationKind.KEYSEND not in kinds:
            raise errors.DestinationUnsupported(
                f"The '{rt.settings.lightning_backend}' Lightning backend cannot pay a node "
                "public key (keysend). Pay an invoice or a Lightning Address instead. Nothing "
                "was charged."
            )
        return Resolved(Kind.KEYSEND, req.destination, None)
    recipient = directory
    if recipient is UNREAD:
        recipient = await recipients.find(rt, req.project_id, req.gamertag)
    if recipient is None:
        if rt.settings.sandbox and DestinationKind.SANDBOX in kinds:
            return Resolved(Kind.GAMERTAG, req.gamertag, None)
        raise errors.RecipientNotFound(
            f"No recipient {req.gamertag} in project {req.project_id}: register where to pay "
            f"it with PUT /api/v1/recipients/{req.gamertag}, or pay a lightningAddress or "
            "invoice directly. Nothing was charged.",
            gamertag=req.gamertag,
        )
    if recipient["suspended"]:
        raise errors.RecipientSuspended(
            f"Payouts to {req.gamertag} are suspended in this project's directory. "
            "Nothing was charged.",
            gamertag=req.gamertag,
        )
    kind = _DIRECTORY_KIND[recipient["kind"]]
    if kind == Kind.KEYSEND:
        if DestinationKind.KEYSEND not in kinds:
            raise errors.DestinationUnsupported(
                f"Recipient {req.gamertag} is a node public key (keysend), which the "
                f"'{rt.settings.lightning_backend}' backend cannot pay. Register a "
                "lightningAddress or lnurl for it instead. Nothing was charged.",
                gamertag=req.gamertag,
            )
        return Resolved(Kind.KEYSEND, recipient["destination"], None)
    return await _via_lnurl(rt, req, kind, recipient["destination"])


def _checked_invoice(rt: Runtime, req: PayoutRequest, text: str) -> invoices.Invoice:
    try:
        invoice = invoices.decode(text)
    except ValueError as exc:
        raise errors.InvalidInvoice(f"invoice: {exc}.", field="invoice") from None
    reason = invoices.refusal(
        invoice,
        amount_sats=req.amount_sats,
        network=rt.settings.lightning_network,
        now_ms=rt.clock.now_ms(),
    )
    if reason is not None:
        raise errors.InvalidInvoice(f"invoice refused: {reason}. Nothing was charged.")
    return invoice


# Domains that never resolve anywhere (RFC 2606, RFC 6761): in the sandbox, with the
# simulated node, a Lightning Address on one of them is paid by name, as a sandbox gamertag
# is, so the sandbox can pay a Lightning Address with nothing leaving the machine.
SANDBOX_ADDRESS_DOMAINS = ("example.com", "example.net", "example.org")
SANDBOX_ADDRESS_SUFFIXES = (".example", ".test", ".invalid", ".localhost")


def sandbox_address(rt: Runtime, kind: str, value: str) -> bool:
    """Whether the simulated node pays this Lightning Address by name (no LNURL fetch)."""
    if kind != Kind.LIGHTNING_ADDRESS or not rt.settings.sandbox:
        return False
    if DestinationKind.SANDBOX not in rt.node.kinds:
        return False
    domain = value.rpartition("@")[2].lower()
    return domain in SANDBOX_ADDRESS_DOMAINS or domain.endswith(SANDBOX_ADDRESS_SUFFIXES)


async def pay_parameters(rt: Runtime, kind: str, value: str) -> dict[str, Any]:
    """The checked LUD-06 pay parameters of a Lightning Address or LNURL (tag, callback,
    min/maxSendable in msat, metadata), fetched through the URL guard; nothing is paid.
    Also what the ZBD-compatible GET /v0/ln-address/validate/{address} answers."""
    if kind == Kind.LIGHTNING_ADDRESS:
        insecure = value.partition("@")[2] in rt.settings.lnurl_insecure_hosts
        url = lightning_address_url(value, "http" if insecure else "https")
    else:
        url = decode_lnurl(value)
    try:
        params = await _get_json(rt, url, value)
    except errors.RecipientUnreachable as unreachable:
        if kind == Kind.LIGHTNING_ADDRESS and rt.settings.sandbox:
            raise errors.RecipientUnreachable(
                f"{unreachable.message} In the sandbox, a Lightning Address on example.com "
                "(or any .test domain) is paid by the simulated node without a lookup.",
                **unreachable.extra,
            ) from None
        raise
    if params.get("tag") != "payRequest":
        raise _invalid(value, f"its tag is {params.get('tag')!r}, not 'payRequest'")
    callback, metadata = params.get("callback"), params.get("metadata")
    low, high = params.get("minSendable"), params.get("maxSendable")
    if not isinstance(callback, str) or not callback:
        raise _invalid(value, "it has no callback URL")
    if not (_is_int(low) and _is_int(high) and 0 < low <= high):
        raise _invalid(value, "minSendable/maxSendable are not positive msat integers")
    if not isinstance(metadata, str) or len(metadata) > METADATA_MAX_CHARS:
        raise _invalid(value, "its metadata is missing or too long")
    try:
        if not isinstance(json.loads(metadata), list):
            raise ValueError
    except ValueError:
        raise _invalid(value, "its metadata is not a JSON array") from None
    return params


async def _via_lnurl(rt: Runtime, req: PayoutRequest, kind: str, value: str) -> Resolved:
    """LUD-16 → LUD-06: the pay parameters, then one invoice for exactly the amount."""
    if sandbox_address(rt, kind, value):
        return Resolved(Kind.LIGHTNING_ADDRESS, value, None)
    params = await pay_parameters(rt, kind, value)
    callback, metadata = params["callback"], params["metadata"]
    low, high = params["minSendable"], params["maxSendable"]
    amount_msat = req.amount_sats * 1000
    if not low <= amount_msat <= high:
        raise errors.RecipientInvoiceInvalid(
            f"{value} accepts {low // 1000}-{high // 1000} sats (as msat {low}-{high}); this "
            f"payout is {req.amount_sats} sats. Nothing was charged.",
            minSendable=low,
            maxSendable=high,
        )
    separator = "&" if urlsplit(callback).query else "?"
    answer = await _get_json(rt, f"{callback}{separator}amount={amount_msat}", value)
    text = answer.get("pr")
    if not isinstance(text, str):
        raise _invalid(value, "its callback answered without an invoice ('pr')")
    try:
        invoice = invoices.decode(text)
    except ValueError as exc:
        raise _invalid(value, f"its invoice: {exc}") from None
    reason = invoices.refusal(
        invoice,
        amount_sats=req.amount_sats,
        network=rt.settings.lightning_network,
        now_ms=rt.clock.now_ms(),
        metadata=metadata,
    )
    if reason is not None:
        raise _invalid(value, reason)
    return Resolved(kind, value, invoice)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _invalid(who: str, reason: str) -> errors.RecipientInvoiceInvalid:
    return errors.RecipientInvoiceInvalid(
        f"The LNURL service of {who} answered wrongly: {reason}. Nothing was charged."
    )


async def _get_json(rt: Runtime, url: str, who: str) -> dict[str, Any]:
    """One bounded GET through the callback guard: https, public addresses, no redirects."""
    settings = rt.settings
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _invalid(who, "a URL with an invalid port") from None
    insecure = f"{(parts.hostname or '').lower()}:{port}" in settings.lnurl_insecure_hosts
    if parts.scheme != "https" and not insecure:
        raise errors.RecipientUnreachable(
            f"The LNURL service of {who} is not https ({parts.scheme}://); payrail fetches "
            "LNURLs over https only. Nothing was charged."
        )
    target: callback_urls.Target | None = None
    if not insecure:
        try:
            target = await callback_urls.vet(
                url, callback_urls.AllowList.parse(()), what="The LNURL URL"
            )
        except callback_urls.UnsafeCallbackUrl as refused:
            raise errors.RecipientUnreachable(
                f"The LNURL service of {who} is refused by the URL guard, not fetched "
                f"(LNURL fetches go to public addresses only): {refused} Nothing was charged."
            ) from None
    headers = {"accept": "application/json", "user-agent": f"payrail/{__version__}"}
    url, extensions = _pinned(url, target, headers)
    timeout_s = settings.lnurl_timeout_ms / 1000
    body = b""
    try:
        async with asyncio.timeout(timeout_s):
            async with (
                httpx.AsyncClient(
                    timeout=timeout_s, follow_redirects=False, trust_env=False, verify=_tls()
                ) as client,
                client.stream("GET", url, headers=headers, extensions=extensions) as response,
            ):
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > LNURL_BODY_MAX_BYTES:
                        raise _invalid(who, f"an answer over {LNURL_BODY_MAX_BYTES} bytes")
                status = response.status_code
    except (TimeoutError, httpx.TimeoutException):
        raise errors.RecipientUnreachable(
            f"The LNURL service of {who} did not answer within {settings.lnurl_timeout_ms} ms. "
            "Nothing was charged; retry later."
        ) from None
    except httpx.HTTPError as exc:
        raise errors.RecipientUnreachable(
            f"The LNURL service of {who} could not be reached ({type(exc).__name__}). "
            "Nothing was charged; retry later."
        ) from None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict) and str(data.get("status", "")).upper() == "ERROR":
        reason = str(data.get("reason", ""))[:200]
        raise errors.RecipientUnreachable(
            f"The LNURL service of {who} refused: {reason}. Nothing was charged."
        )
    if status != 200:
        raise errors.RecipientUnreachable(
            f"The LNURL service of {who} answered HTTP {status}"
            f"{' (redirects are not followed)' if 300 <= status < 400 else ''}. "
            "Nothing was charged."
        )
    if not isinstance(data, dict):
        raise _invalid(who, "an answer that is not a JSON object")
    return data
