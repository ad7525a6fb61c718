"""The /v0 contract: ZBD's request bodies and the `data` of its answers, as payrail serves them.

Field names, units (msat decimal strings) and statuses are ZBD's; docs/zbd.md says where
payrail's meaning differs. The routes parse bodies by hand; these models only document.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from payrail.domain.payouts import CALLBACK_URL_MAX_CHARS, DESCRIPTION_MAX_CHARS
from payrail.entrypoints.http.models import Body, Model

MSAT = "millisatoshis as a decimal string; a whole number of sats (a multiple of 1000)"
AMOUNT = Field(pattern=r"^[0-9]{1,30}$", description=MSAT)
TRANSACTION_STATUSES = (
    "TRANSACTION_STATUS_PROCESSING, TRANSACTION_STATUS_COMPLETED or TRANSACTION_STATUS_FAILED"
)


class Wallet(Model):
    balance: str = Field(description="available " + MSAT)
    unit: str = Field(description="msats")
    walletId: str = Field(description="payrail: the project id (receiverWalletId of transfers)")


class GamertagPaymentBody(Body):
    amount: str = AMOUNT
    gamertag: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = Field(None, max_length=DESCRIPTION_MAX_CHARS)
    internalId: str | None = Field(None, description="payrail extension: your reference")


class GamertagPayment(Model):
    id: str
    status: str = Field(description="settled, processing or failed")
    transactionId: str = Field(description="GET /v0/gamertag/transaction/{id}")
    receiverId: str | None = Field(description="payrail: the gamertag (no ZBD user ids)")
    amount: str
    comment: str
    settledAt: str | None


class GamertagTransaction(Model):
    id: str
    receiverId: str | None
    amount: str
    fee: str
    unit: str
    comment: str
    status: str = Field(description=TRANSACTION_STATUSES)
    processedAt: str | None
    confirmedAt: str | None


class LnAddressPaymentBody(Body):
    """The Lightning Address (LUD-16) is resolved, then its invoice paid."""

    amount: str = AMOUNT
    lnAddress: str = Field(description="name@domain", max_length=320)
    comment: str | None = Field(None, max_length=DESCRIPTION_MAX_CHARS)
    internalId: str | None = None
    callbackUrl: str | None = Field(None, max_length=CALLBACK_URL_MAX_CHARS)


class Payment(Model):
    """A Lightning payment: the fields of ZBD's payment and Lightning Address payment."""

    id: str
    fee: str
    unit: str
    amount: str
    invoice: str | None
    preimage: str | None = Field(description="always null: payrail does not keep it")
    walletId: str
    transactionId: str
    internalId: str | None
    description: str
    comment: str
    status: str = Field(description="processing, completed or failed")
    processedAt: str | None
    confirmedAt: str | None


class LnAddressValidation(Model):
    valid: bool
    metadata: dict[str, Any] | None = Field(description="the LNURL-pay parameters (LUD-06)")


class PaymentBody(Body):
    invoice: str = Field(description="BOLT11, with an amount (amountless ones are refused)")
    amount: str | None = Field(None, pattern=r"^[0-9]{1,30}$", description="the invoice's")
    description: str | None = Field(None, max_length=DESCRIPTION_MAX_CHARS)
    internalId: str | None = None
    callbackUrl: str | None = Field(None, max_length=CALLBACK_URL_MAX_CHARS)


class KeysendBody(Body):
    amount: str = AMOUNT
    pubkey: str = Field(pattern=r"^0[23][0-9a-fA-F]{64}$")
    callbackUrl: str | None = Field(None, max_length=CALLBACK_URL_MAX_CHARS)
    metadata: dict[str, Any] | None = Field(None, description="accepted, not stored")
    tlvRecords: list[dict[str, Any]] | None = Field(None, description="refused when not empty")


class KeysendTransaction(Model):
    id: str
    walletId: str
    type: str
    totalAmount: str
    fee: str
    amount: str
    description: str
    status: str = Field(description=TRANSACTION_STATUSES)
    confirmedAt: str | None


class Keysend(Model):
    keysendId: str
    paymentId: str
    transaction: KeysendTransaction


class DecodeBody(Body):
    invoice: str = Field(description="BOLT11")


class DecodedInvoice(Model):
    amount: str | None = Field(description="msats; null for an amountless invoice")
    lnRequest: str
    lnExpiresAt: str | None
    network: str
    description: str | None
    descriptionHash: str | None
    paymentHash: str
    paymentSecret: str | None
    payee: str | None
    signature: str | None


class BtcUsd(Model):
    btcUsdPrice: str = Field(description="US dollars per bitcoin")
    btcUsdTimestamp: str = Field(description="unix seconds")


class InternalTransferBody(Body):
    amount: str = AMOUNT
    receiverWalletId: str = Field(min_length=1, max_length=64, description="a project id")


class InternalTransfer(Model):
    id: str
    senderWalletId: str
    receiverWalletId: str
    userId: str | None
    sendTxId: str
    receiveTxId: str
    status: str = Field(description="TRANSFER_STATUS_COMPLETED")
    amount: str
    createdAt: str | None
    updatedAt: str | None


class ChargeBody(Body):
    amount: str = AMOUNT
    description: str | None = Field(None, max_length=DESCRIPTION_MAX_CHARS)
    expiresIn: int | None = Field(None, description="seconds (payrail's deposit expiresInS)")
    internalId: str | None = Field(None, description="echoed in the answer, not kept")
    callbackUrl: str | None = Field(None, description="not used: deposits send no callbacks")


class ChargeInvoice(Model):
    request: str = Field(description="BOLT11 to pay")
    uri: str = Field(description="lightning:<request>")


class Charge(Model):
    id: str
    unit: str
    amount: str
    createdAt: str | None
    callbackUrl: str | None
    internalId: str | None
    description: str
    expiresAt: str | None
    confirmedAt: str | None
    status: str = Field(description="pending, completed or expired")
    invoice: ChargeInvoice


class ZbdWithdrawalRequestBody(Body):
    amount: str = AMOUNT
    expiresIn: int | None = Field(None, description="seconds (payrail's claim-link expiresInS)")
    description: str | None = Field(None, max_length=DESCRIPTION_MAX_CHARS)
    internalId: str | None = Field(None, description="kept (payrail's internalId)")
    callbackUrl: str | None = Field(None, description="not used: claim links send no callbacks")


class ZbdWithdrawalInvoice(Model):
    request: str = Field(description="The LNURL-withdraw (LUD-01 bech32, upper case)")
    uri: str = Field(description="lightning:<request>")


class ZbdWithdrawalRequest(Model):
    id: str
    unit: str
    amount: str
    fee: str
    createdAt: str | None
    expiresAt: str | None
    internalId: str | None
    description: str
    callbackUrl: str | None
    status: str = Field(description="pending, processing, completed, error or expired")
    invoice: ZbdWithdrawalInvoice
    url: str = Field(description="payrail extension: the claim page")
    approval: str | None = Field(
        None,
        description="payrail extension: required while the link waits for an approver "
        "(approvalAboveSats; no wallet can claim it yet), then approved or rejected",
    )
