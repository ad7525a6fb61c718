"""SSRF guard: IPv6 forms that embed a private IPv4 address, and IPv6 ranges that are not
globally routable although Python's `is_global` says they are. Offline: no connection is made,
only `address_refusal` and `vet` (with literal addresses, which are never looked up)."""

from __future__ import annotations

import ipaddress

import pytest

from payrail.services import callback_urls


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("::127.0.0.1", "IPv4-compatible loopback"),
        ("::a9fe:a9fe", "IPv4-compatible metadata 169.254.169.254"),
        ("::10.0.0.1", "IPv4-compatible private"),
        ("::8.8.8.8", "IPv4-compatible is deprecated, never routed"),
        ("64:ff9b:1::7f00:1", "local-use NAT64 of loopback"),
        ("64:ff9b:1::808:808", "local-use NAT64, a local translator whatever it embeds"),
        ("::ffff:0:7f00:1", "SIIT IPv4-translated loopback"),
        ("::ffff:0:a9fe:a9fe", "SIIT IPv4-translated metadata"),
        ("::ffff:0:808:808", "SIIT is not routed on the internet"),
        ("fec0::1", "site-local"),
        ("feff::1", "site-local, top of fec0::/10"),
        ("::ffff:169.254.169.254", "IPv4-mapped metadata (already refused)"),
        ("64:ff9b::a9fe:a9fe", "well-known NAT64 of metadata (already refused)"),
        ("::1", "loopback"),
        ("::", "unspecified"),
    ],
)
def test_ipv6_forms_embedding_private_ipv4_or_not_routable_are_refused(address, why):
    assert callback_urls.address_refusal(ipaddress.ip_address(address)) is not None, why


@pytest.mark.parametrize(
    "address", ["2606:4700:4700::1111", "64:ff9b::808:808", "::ffff:8.8.8.8", "2001:4860::8888"]
)
def test_public_ipv6_and_nat64_of_a_public_address_stay_allowed(address):
    assert callback_urls.address_refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://[::127.0.0.1]/hook",
        "https://[::a9fe:a9fe]/hook",
        "https://[64:ff9b:1::a00:1]/hook",
        "https://[::ffff:0:7f00:1]:8443/hook",
        "https://[fec0::1]/hook",
    ],
)
async def test_vet_refuses_embedded_private_ipv6_literals_without_connecting(url):
    with pytest.raises(callback_urls.UnsafeCallbackUrl, match="callbacks go only to public"):
        await callback_urls.vet(url, callback_urls.AllowList.parse([]))
