"""BOLT11 invoices with no I/O: decode (with the maintained `bolt11` library) and check one.

Every invoice payrail pays passes `check` first, whoever supplied it: a caller's `invoice`
or an LNURL service's answer. A mismatch is a reason string; the caller picks the error.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import bolt11
from bolt11.exceptions import Bolt11Exception

INVOICE_MAX_CHARS = 4_096  # a BOLT11 string with many route hints stays far below
# An invoice must stay payable this long after it is checked: the send follows at once,
# but a queue or a retry of the first send may take a moment.
INVOICE_VALIDITY_MIN_MS = 30_000

# PAYRAIL_LIGHTNING_NETWORK → the BOLT11 currency prefix (lnbc…, lntb…, lntbs…, lnbcrt…).
NETWORK_CURRENCY = {"bitcoin": "bc", "testnet": "tb", "signet": "tbs", "regtest": "bcrt"}


@dataclass(frozen=True)
class Invoice:
    bolt11: str
    payment_hash: str
    currency: str
    amount_msat: int | None
    expires_at_ms: int
    description_hash: str | None
    payee: str | None
    # Read for the ZBD-compatible decode (POST /v0/decode-invoice); no check uses them.
    description: str | None = None
    payment_secret: str | None = None
    signature: str | None = None  # the 64-byte compact signature, hex


def decode(text: str) -> Invoice:
    """Decode and verify the signature; ValueError with the reason if it is not an invoice."""
    if not isinstance(text, str) or not 0 < len(text) <= INVOICE_MAX_CHARS:
        raise ValueError(f"an invoice is a BOLT11 string of at most {INVOICE_MAX_CHARS} characters")
    cleaned = text.strip().lower().removeprefix("lightning:")
    try:
        decoded = bolt11.decode(cleaned)
        payment_hash = decoded.payment_hash
    except (Bolt11Exception, ValueError, TypeError, IndexError, KeyError) as exc:
        raise ValueError(f"it is not a valid BOLT11 invoice ({type(exc).__name__})") from None
    return Invoice(
        bolt11=cleaned,
        payment_hash=payment_hash,
        currency=decoded.currency,
        amount_msat=int(decoded.amount_msat) if decoded.amount_msat is not None else None,
        expires_at_ms=(decoded.date + decoded.expiry) * 1000,
        description_hash=decoded.description_hash,
        payee=decoded.payee,
        description=decoded.description,
        payment_secret=decoded.payment_secret,
        signature=decoded.signature.signature_data[:64].hex() if decoded.signature else None,
    )


def refusal(
    invoice: Invoice,
    *,
    amount_sats: int,
    network: str,
    now_ms: int,
    metadata: str | None = None,
) -> str | None:
    """Why this invoice must not be paid for `amount_sats`, or None when it may."""
    expected_currency = NETWORK_CURRENCY[network]
    if invoice.currency != expected_currency:
        return f"the invoice is for network '{invoice.currency}', not {network}"
    if invoice.amount_msat is None:
        return "the invoice has no amount; payrail pays only invoices for the exact amount"
    if invoice.amount_msat != amount_sats * 1000:
        return (
            f"the invoice asks for {invoice.amount_msat} msat, not the {amount_sats * 1000} msat "
            "of this payout"
        )
    if invoice.expires_at_ms < now_ms + INVOICE_VALIDITY_MIN_MS:
        return "the invoice has expired or expires within 30 s"
    if (
        metadata is not None
        and invoice.description_hash is not None
        and invoice.description_hash != hashlib.sha256(metadata.encode("utf-8")).hexdigest()
    ):
        return "the invoice's description hash is not the SHA-256 of the LNURL metadata"
    return None
