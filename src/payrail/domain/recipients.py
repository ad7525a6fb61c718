"""Recipient rules with no I/O: who a payout can go to, and how each destination is written.

A recipient is one of three destination kinds: a Lightning Address (LUD-16, `name@domain`),
an LNURL-pay link (LUD-06, bech32 `lnurl1…`) or a node public key (keysend). Gamertags are
matched case-insensitively through `gamertag_key`, the one normalisation rule.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from payrail.domain import errors

# Every pattern here is used with .fullmatch: with ^…$ and .match, Python's $ also matches
# before a final "\n" ("ratey\n" passed as a gamertag and escaped the rate limit of "ratey").
GAMERTAG_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
LIGHTNING_ADDRESS_MAX_CHARS = 320  # an e-mail address's limit; LUD-16 names one like it
LNURL_MAX_CHARS = 2_048
LNURL_URL_MAX_CHARS = 1_024
RATE_KEY_MAX_CHARS = 64  # payouts.gamertag, which the rate limit counts by
PLAYER_ID_MAX_CHARS = 128  # payouts.player_id, recipients.player_id

# LUD-16: the name is a-z0-9-_.+ ; the domain a host name, with a port only for tests and
# private networks (PAYRAIL_LNURL_INSECURE_HOSTS).
_NAME_RE = re.compile(r"[a-z0-9\-_.+]{1,64}")
_DOMAIN_RE = re.compile(r"[a-z0-9](?:[a-z0-9\-.]{0,251}[a-z0-9])?(?::[0-9]{1,5})?")
PUBKEY_RE = re.compile(r"0[23][0-9a-f]{64}")
_BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


class RecipientKind(StrEnum):
    LIGHTNING_ADDRESS = "lightning_address"
    LNURL = "lnurl"
    NODE_PUBKEY = "node_pubkey"


# The request field of each kind (PUT /recipients/{gamertag}).
FIELD_OF: dict[RecipientKind, str] = {
    RecipientKind.LIGHTNING_ADDRESS: "lightningAddress",
    RecipientKind.LNURL: "lnurl",
    RecipientKind.NODE_PUBKEY: "nodePubkey",
}


def gamertag_key(gamertag: str) -> str:
    """The directory's key for a gamertag: 'Alice' and 'alice' are one recipient."""
    return gamertag.lower()


def rate_key(value: str) -> str:
    """What the per-recipient rate limit counts by, bounded to payouts.gamertag's width."""
    if len(value) <= RATE_KEY_MAX_CHARS:
        return value
    return hashlib.sha256(value.encode()).hexdigest()


def parse_player_id(value: Any) -> str | None:
    """playerId: the studio's own stable id of the player, 1-128 characters, optional."""
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= PLAYER_ID_MAX_CHARS
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        raise errors.ValidationError(
            f"playerId must be 1-{PLAYER_ID_MAX_CHARS} characters, none a control character.",
            field="playerId",
        )
    return value


def parse_gamertag(value: Any) -> str:
    if not isinstance(value, str) or not GAMERTAG_RE.fullmatch(value):
        raise errors.ValidationError(
            "gamertag must be 1-64 characters of letters, digits, '_', '.' or '-'.",
            field="gamertag",
        )
    return value


def parse_lightning_address(value: Any, field: str = "lightningAddress") -> str:
    """A LUD-16 address, lowercased: `name@domain`."""
    if not isinstance(value, str) or len(value) > LIGHTNING_ADDRESS_MAX_CHARS:
        raise errors.ValidationError(
            f"{field} must be a Lightning Address like name@example.com.", field=field
        )
    name, at, domain = value.strip().lower().partition("@")
    if not (at and _NAME_RE.fullmatch(name) and _DOMAIN_RE.fullmatch(domain)):
        raise errors.ValidationError(
            f"{field} must be a Lightning Address like name@example.com "
            "(the name: a-z, 0-9, '-', '_', '.', '+').",
            field=field,
        )
    return f"{name}@{domain}"


def lightning_address_url(address: str, scheme: str) -> str:
    """LUD-16: where an address's pay parameters are: <scheme>://domain/.well-known/lnurlp/name."""
    name, _, domain = address.partition("@")
    return f"{scheme}://{domain}/.well-known/lnurlp/{name}"


def parse_lnurl(value: Any, field: str = "lnurl") -> str:
    """A bech32 LNURL (LUD-01), lowercased; its URL must decode and be http(s)."""
    if not isinstance(value, str) or not 0 < len(value) <= LNURL_MAX_CHARS:
        raise errors.ValidationError(f"{field} must be a bech32 lnurl1… string.", field=field)
    lnurl = value.strip().lower().removeprefix("lightning:")
    try:
        decode_lnurl(lnurl)
    except ValueError as exc:
        raise errors.ValidationError(f"{field} is not a valid LNURL: {exc}.", field=field) from None
    return lnurl


def decode_lnurl(lnurl: str) -> str:
    """The URL inside a bech32 LNURL. Raises ValueError with the reason."""
    hrp, _, data_part = lnurl.lower().rpartition("1")
    if hrp != "lnurl" or len(data_part) < 6:
        raise ValueError("it must start with lnurl1")
    if any(c not in _BECH32_CHARSET for c in data_part):
        raise ValueError("it has characters outside bech32")
    data = [_BECH32_CHARSET.index(c) for c in data_part]
    if _bech32_polymod([ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp] + data) != 1:
        raise ValueError("its checksum is wrong")
    raw = _convert_5_to_8(data[:-6])
    try:
        url = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("it does not hold a URL") from None
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or len(url) > LNURL_URL_MAX_CHARS
    ):
        raise ValueError("it does not hold an http(s) URL")
    return url


def encode_lnurl(url: str) -> str:
    """The bech32 LNURL of a URL (tests and docs build examples with it)."""
    data = _convert_8_to_5(url.encode())
    values = [ord(c) >> 5 for c in "lnurl"] + [0] + [ord(c) & 31 for c in "lnurl"] + data
    polymod = _bech32_polymod(values + [0] * 6) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return "lnurl1" + "".join(_BECH32_CHARSET[d] for d in data + checksum)


def _bech32_polymod(values: list[int]) -> int:
    generator = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= generator[i] if ((top >> i) & 1) else 0
    return chk


def _convert_5_to_8(data: list[int]) -> bytes:
    acc, bits, out = 0, 0, bytearray()
    for value in data:
        acc = (acc << 5) | value
        bits += 5
        while bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    if bits >= 5 or (acc & ((1 << bits) - 1)):
        raise ValueError("its padding is wrong")
    return bytes(out)


def _convert_8_to_5(data: bytes) -> list[int]:
    acc, bits, out = 0, 0, []
    for byte in data:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append((acc >> bits) & 31)
    if bits:
        out.append((acc << (5 - bits)) & 31)
    return out


def parse_node_pubkey(value: Any, field: str = "nodePubkey") -> str:
    if not isinstance(value, str) or not PUBKEY_RE.fullmatch(value.lower()):
        raise errors.ValidationError(
            f"{field} must be a node public key: 66 hex characters starting with 02 or 03.",
            field=field,
        )
    return value.lower()


@dataclass(frozen=True)
class RecipientChange:
    """A validated PUT body: the destination, and whether payouts to it are suspended."""

    kind: RecipientKind
    destination: str
    suspended: bool
    player_id: str | None = None  # the studio's player id: payouts to it count as that player


_PARSERS = {
    RecipientKind.LIGHTNING_ADDRESS: parse_lightning_address,
    RecipientKind.LNURL: parse_lnurl,
    RecipientKind.NODE_PUBKEY: parse_node_pubkey,
}


def parse_recipient(body: Any) -> RecipientChange:
    """PUT /recipients/{gamertag}: exactly one destination field, and optional `suspended`."""
    if not isinstance(body, dict):
        raise errors.ValidationError("Request body must be a JSON object.")
    given = [kind for kind, name in FIELD_OF.items() if body.get(name) is not None]
    if len(given) != 1:
        raise errors.ValidationError(
            "Give exactly one of lightningAddress, lnurl or nodePubkey.",
            fields=list(FIELD_OF.values()),
        )
    kind = given[0]
    suspended = body.get("suspended", False)
    if not isinstance(suspended, bool):
        raise errors.ValidationError("suspended must be true or false.", field="suspended")
    player_id = parse_player_id(body.get("playerId"))
    return RecipientChange(kind, _PARSERS[kind](body[FIELD_OF[kind]]), suspended, player_id)
