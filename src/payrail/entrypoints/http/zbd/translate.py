"""ZBD's wire format and payrail's, both ways, with no I/O: amounts, statuses, objects.

ZBD counts millisatoshis in decimal strings; payrail's ledger counts whole sats. An amount is
translated exactly or refused: never rounded (a rounded payout would pay or charge what the
studio did not ask for). Every limit stays payrail's own (domain/money.py): this module
converts what crosses the wire and decides nothing about money.
"""

from __future__ import annotations

from typing import Any

from payrail.domain import errors
from payrail.domain.invoices import NETWORK_CURRENCY, Invoice

MSAT_PER_SAT = 1_000
UNIT = "msats"
# A decimal msat string longer than this is no amount anyone means (10^30 msat); refusing it
# first keeps int() away from a megabyte of digits.
MSAT_DIGITS_MAX = 30

# payrail's public payout status → ZBD's, per ZBD object. ZBD has no "expired" payment: a
# payout that expired was never sent and its reservation released, which a ZBD client reads
# as "failed" (nothing paid, nothing charged).
PAYMENT_STATUS = {
    "pending": "processing",
    "completed": "completed",
    "error": "failed",
    "expired": "failed",
}
# ZBD answers a gamertag payment "settled" once paid (it is synchronous at ZBD).
GAMERTAG_SEND_STATUS = PAYMENT_STATUS | {"completed": "settled"}
TRANSACTION_STATUS = {
    "pending": "TRANSACTION_STATUS_PROCESSING",
    "completed": "TRANSACTION_STATUS_COMPLETED",
    "error": "TRANSACTION_STATUS_FAILED",
    "expired": "TRANSACTION_STATUS_FAILED",
}
TRANSFER_STATUS_COMPLETED = "TRANSFER_STATUS_COMPLETED"
NETWORK_OF_CURRENCY = {currency: network for network, currency in NETWORK_CURRENCY.items()}


def msat(sats: int | None) -> str | None:
    """sats → ZBD's msat string."""
    return None if sats is None else str(sats * MSAT_PER_SAT)


def sats_of_msat(value: Any, field: str = "amount") -> int:
    """ZBD's msat amount (a decimal string, or a JSON integer) → whole sats, or a refusal.

    A fraction of a sat is refused, not rounded: payrail's ledger has no unit below the sat.
    The range (1..100,000 sats) is checked by payrail's own payout rules afterwards.
    """
    if value is None or value == "":
        raise errors.ValidationError(
            f'The "{field}" property (in millisatoshis) is required.', missingFields=[field]
        )
    if isinstance(value, bool):
        raise _not_msat(field, value)
    if isinstance(value, int):
        amount = value
    elif isinstance(value, str) and 0 < len(value) <= MSAT_DIGITS_MAX and value.isascii():
        if not value.isdigit():
            raise _not_msat(field, value)
        amount = int(value)
    else:
        raise _not_msat(field, value)
    if amount <= 0:
        raise errors.InvalidAmount(
            f'The "{field}" property (in millisatoshis) must be greater than 0.', field=field
        )
    if amount % MSAT_PER_SAT:
        raise errors.InvalidAmount(
            f'The "{field}" property is {amount} millisatoshis, which is not a whole number '
            f"of sats: payrail's ledger counts whole sats. Send a multiple of {MSAT_PER_SAT} "
            f"(e.g. {amount // MSAT_PER_SAT * MSAT_PER_SAT or MSAT_PER_SAT}).",
            field=field,
            unit=UNIT,
        )
    return amount // MSAT_PER_SAT


def _not_msat(field: str, value: Any) -> errors.InvalidAmount:
    shown = repr(value) if not isinstance(value, str) or len(value) <= 40 else "a long string"
    return errors.InvalidAmount(
        f'The "{field}" property must be an amount in millisatoshis as a string of digits '
        f'(e.g. "21000" for 21 sats), not {shown}.',
        field=field,
        unit=UNIT,
    )


def amount_refusal_in_msat(exc: errors.PayrailError) -> errors.PayrailError:
    """payrail's INVALID_AMOUNT names sats; a ZBD client sent msats: say it in its unit."""
    low, high = exc.extra.get("minAmount"), exc.extra.get("maxAmount")
    if not isinstance(exc, errors.InvalidAmount) or low is None or high is None:
        return exc
    return errors.InvalidAmount(
        f'The "amount" property (in millisatoshis) must be from {low * MSAT_PER_SAT} to '
        f"{high * MSAT_PER_SAT} ({low} to {high:,} sats, payrail's payout limits).",
        minAmount=msat(low),
        maxAmount=msat(high),
        unit=UNIT,
    )


def text(value: str | None) -> str:
    """ZBD answers an absent comment or description as an empty string."""
    return value or ""


def gamertag_payment(view: dict[str, Any]) -> dict[str, Any]:
    """POST /v0/gamertag/send-payment's data, from a payout's public view."""
    return {
        "id": view["id"],
        "status": GAMERTAG_SEND_STATUS[view["status"]],
        "transactionId": view["id"],
        "receiverId": view["gamertag"],
        "amount": msat(view["amount"]),
        "comment": text(view["description"]),
        "settledAt": view["settledAt"],
    }


def gamertag_transaction(view: dict[str, Any]) -> dict[str, Any]:
    """GET /v0/gamertag/transaction/{id}'s data."""
    return {
        "id": view["id"],
        "receiverId": view["gamertag"],
        "amount": msat(view["amount"]),
        "fee": msat(view["fee"]),
        "unit": UNIT,
        "comment": text(view["description"]),
        "status": TRANSACTION_STATUS[view["status"]],
        "processedAt": view["createdAt"],
        "confirmedAt": view["settledAt"],
    }


def payment(view: dict[str, Any]) -> dict[str, Any]:
    """A Lightning payment (invoice or Lightning Address): POST/GET /v0/payments and
    POST /v0/ln-address/send-payment answer the fields of both ZBD objects."""
    return {
        "id": view["id"],
        "fee": msat(view["fee"]),
        "unit": UNIT,
        "amount": msat(view["amount"]),
        "invoice": view["invoice"],
        "preimage": None,  # payrail does not keep the preimage (docs/zbd.md)
        "walletId": view["projectId"],
        "transactionId": view["id"],
        "callbackUrl": view["callbackUrl"],
        "internalId": view["internalId"],
        "description": text(view["description"]),
        "comment": text(view["description"]),
        "lnAddress": view["lightningAddress"],
        "status": PAYMENT_STATUS[view["status"]],
        "createdAt": view["createdAt"],
        "processedAt": view["createdAt"],
        "confirmedAt": view["settledAt"],
    }


def keysend(view: dict[str, Any]) -> dict[str, Any]:
    """POST /v0/keysend-payment's data."""
    return {
        "keysendId": view["id"],
        "paymentId": view["id"],
        "transaction": {
            "id": view["id"],
            "walletId": view["projectId"],
            "type": "KEYSEND_PAYMENT",
            "totalAmount": msat(view["totalCost"]),
            "fee": msat(view["fee"]),
            "amount": msat(view["amount"]),
            "description": text(view["description"]),
            "status": TRANSACTION_STATUS[view["status"]],
            "confirmedAt": view["settledAt"],
        },
    }


def decoded_invoice(invoice: Invoice, expires_at: str | None) -> dict[str, Any]:
    """POST /v0/decode-invoice's data: the invoice as payrail's decoder read it."""
    return {
        "amount": None if invoice.amount_msat is None else str(invoice.amount_msat),
        "lnRequest": invoice.bolt11,
        "lnExpiresAt": expires_at,
        "network": NETWORK_OF_CURRENCY.get(invoice.currency, invoice.currency),
        "description": invoice.description,
        "descriptionHash": invoice.description_hash,
        "paymentHash": invoice.payment_hash,
        "paymentSecret": invoice.payment_secret,
        "payee": invoice.payee,
        "signature": invoice.signature,
    }
