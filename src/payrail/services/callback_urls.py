"""Where a callback may be sent in production: only to public addresses (no SSRF).

A studio controls callbackUrl, so without this check it could make payrail POST to our own
network: the database, an admin port, the cloud metadata service. The host is resolved and
every address must be public, at payout creation and again before each delivery (DNS can
change between the two). The delivery then connects to the address that was checked, not
to whatever a second lookup returns, so a rebinding DNS server cannot slip past.
Operators exempt their own receivers with PAYRAIL_CALLBACK_ALLOW_HOSTS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from payrail.config import Settings
from payrail.domain import errors
from payrail.domain.payouts import validate_callback_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

RESOLVE_TIMEOUT_MS = 2_000
ADDRESSES_MAX = 16  # a name resolving to more is checked on its first 16, and used on those
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE_PREFIX = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d (RFC 4291)
SIIT_PREFIX = ipaddress.ip_network("::ffff:0:0:0/96")  # IPv4-translated ::ffff:0:a.b.c.d
# IPv6 ranges no public callback receiver can live in, whatever they embed; Python's
# is_global says True for all of them.
NOT_ROUTABLE_NETWORKS = (
    (IPV4_COMPATIBLE_PREFIX, "a deprecated IPv4-compatible IPv6 address"),
    (SIIT_PREFIX, "an IPv4-translated (SIIT) IPv6 address"),
    (ipaddress.ip_network("64:ff9b:1::/48"), "a local-use NAT64 address"),
    (ipaddress.ip_network("fec0::/10"), "a site-local IPv6 address"),
)
# Cloud metadata services. Most are already link-local or private; listed so the refusal
# names them, and for the ones that are not (Oracle's 192.0.0.192).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "192.0.0.192", "fd00:ec2::254")
)


class UnsafeCallbackUrl(Exception):
    """The callback URL points (or now resolves) somewhere payrail must not send requests."""


def _embedded(ip: IPAddress) -> list[IPAddress]:
    """The address and any IPv4 address tunnelled inside it.

    Mapped, IPv4-compatible, SIIT, 6to4, Teredo and NAT64: each carries an IPv4 address a
    dual-stack host may reach, so the inner address is checked as if it were the target.
    """
    found: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.ipv4_mapped is not None:
            found.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            found.append(ip.sixtofour)
        if ip.teredo is not None:
            found.extend(ip.teredo)
        if any(ip in net for net in (NAT64_PREFIX, IPV4_COMPATIBLE_PREFIX, SIIT_PREFIX)):
            found.append(low32)
    return found


def address_refusal(ip: IPAddress) -> str | None:
    """Why a callback may not go to `ip`, or None when it is a public unicast address."""
    if ip.is_loopback or ip.is_unspecified:  # ::1 and :: sit inside the IPv4-compatible /96
        return "a loopback address" if ip.is_loopback else "not a unicast address"
    for candidate in _embedded(ip):
        if candidate in METADATA_ADDRESSES:
            return "a cloud metadata address"
        if candidate.is_loopback:
            return "a loopback address"
        if candidate.is_link_local:
            return "a link-local address"
        if candidate.is_multicast or candidate.is_unspecified:
            return "not a unicast address"
        if candidate.is_private:
            return "a private address"
        if not candidate.is_global:
            return "not a public address"
    for network, reason in NOT_ROUTABLE_NETWORKS:
        if ip.version == network.version and ip in network:
            return reason
    return None


@dataclass(frozen=True)
class AllowList:
    """PAYRAIL_CALLBACK_ALLOW_HOSTS: exact host names, IP addresses or CIDR networks."""

    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: tuple[str, ...] | list[str]) -> AllowList:
        hosts, networks = set(), []
        for entry in entries:
            entry = entry.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.networks)


@dataclass(frozen=True)
class Target:
    """A vetted destination. `addresses` empty means connect by name (the host is allowed)."""

    host: str
    port: int
    addresses: tuple[IPAddress, ...]


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """All addresses of `host`, bounded in time. Tests replace this to fake DNS."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(
        loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_MS / 1000
    )
    seen: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in seen:
            seen.append(ip)
    return seen[:ADDRESSES_MAX]


async def vet(url: str, allow: AllowList, what: str = "callbackUrl") -> Target:
    """Resolve the URL's host and check every address; raise UnsafeCallbackUrl if any is ours.

    `what` names the URL in the refusal (a callbackUrl, or the LNURL service a payout needs)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeCallbackUrl(f"{what} has an invalid port.") from None
    if not host:
        raise UnsafeCallbackUrl(f"{what} has no host.")
    if allow.allows_host(host):
        return Target(host, port, ())
    try:
        addresses = await resolve_host(host, port)
    except (OSError, TimeoutError, UnicodeError):
        raise UnsafeCallbackUrl(
            f"{what} host {host} does not resolve, so it cannot be checked."
        ) from None
    if not addresses:
        raise UnsafeCallbackUrl(f"{what} host {host} has no addresses.")
    for ip in addresses:
        if allow.allows_address(ip):
            continue
        reason = address_refusal(ip)
        if reason is not None:
            raise UnsafeCallbackUrl(
                f"{what} host {host} resolves to {ip}, {reason}; callbacks go only to "
                "public addresses (an operator can allow a host with PAYRAIL_CALLBACK_ALLOW_HOSTS)."
            )
    return Target(host, port, tuple(addresses))


async def refusal_at_creation(settings: Settings, url: object) -> str | None:
    """Production: why a new payout's callbackUrl is refused (4th check of POST /payouts), or None.

    Returns a reason instead of raising so the domain parser reports it in its place in the
    validation order. A URL that is not even http(s) is left to the parser's own check.
    """
    if settings.sandbox:
        return None
    try:
        if validate_callback_url(url) is None:
            return None
    except errors.InvalidCallbackUrl:
        return None
    assert isinstance(url, str)
    try:
        await vet(url, AllowList.parse(settings.callback_allow_hosts))
    except UnsafeCallbackUrl as refused:
        return str(refused)
    return None
