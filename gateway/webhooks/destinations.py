"""Where a tenant's webhook may go: never into the operator's own network unless the operator says so.

A URL is ``http``/``https``, at most ``bounds.WEBHOOK_URL`` characters, with a host and no credentials, and (with
``LLMAAS_WEBHOOK_ALLOWED_HOSTS``) one of the allowed hosts. Each of its host's addresses must be public: not
loopback, private, link-local (the cloud metadata service at 169.254.169.254 among them), shared, multicast,
reserved or unspecified, also when an IPv6 address embeds an IPv4 one (mapped, 6to4, Teredo, NAT64). Checked when
an endpoint is made or changed (every address the name has then), and again at every delivery after DNS: the
delivery's connection goes only to the addresses checked (``CheckedResolver``), so a name that resolves elsewhere
by then (DNS rebinding) is refused, not followed. ``LLMAAS_WEBHOOK_ALLOW_PRIVATE`` lifts the address check."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from gateway import bounds
from gateway.errors import InvalidRequestError

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_RESOLVE_SECONDS = 5.0


def _embedded(address: IPv6Address) -> IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPv4Address | IPv6Address) -> bool:
    if isinstance(address, IPv6Address) and (inner := _embedded(address)) is not None:
        return is_public(inner)
    return address.is_global and not address.is_multicast


def refused(message: str) -> InvalidRequestError:
    return InvalidRequestError(f"Invalid webhook URL: {message}", param="url", code="invalid_url")


@dataclass(frozen=True)
class Destinations:
    """The operator's rules: ``allow_private`` lifts the address check; ``allowed_hosts``, when not empty, are the
    only hosts (``*.example.com``: its subdomains)."""

    allow_private: bool = False
    allowed_hosts: tuple[str, ...] = ()

    def check_url(self, url: str) -> URL:
        """The URL, if its form and host may be used (addresses aside); else a 400 naming ``url``."""
        if len(url) > bounds.WEBHOOK_URL:
            raise refused(f"it is longer than {bounds.WEBHOOK_URL} characters.")
        if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
            raise refused("it contains spaces or control characters.")
        try:
            parsed = URL(url)
            host = (parsed.raw_host or "").lower().rstrip(".")
        except (ValueError, UnicodeError):
            raise refused("it cannot be parsed.") from None
        if parsed.scheme not in ("http", "https") or not host:
            raise refused("only http:// and https:// URLs with a host are allowed.")
        if parsed.raw_user is not None or parsed.raw_password is not None:
            raise refused("credentials in the URL are not allowed.")
        if self.allowed_hosts and not any(_matches(host, allowed) for allowed in self.allowed_hosts):
            raise refused(f"the host '{host}' is not one this server sends webhooks to.")
        try:
            literal: IPv4Address | IPv6Address | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None and not self.allow_private and not is_public(literal):
            raise refused(f"the address {literal} is not a public address.")
        return parsed

    def allowed(self, address: str) -> bool:
        return self.allow_private or is_public(ipaddress.ip_address(address.split("%", 1)[0]))

    async def check(self, url: str) -> None:
        """The URL may be used and every address its host has now is allowed (an endpoint made or changed)."""
        parsed = self.check_url(url)
        resolved = await _resolve(parsed.raw_host or "", parsed.port or 0)
        for entry in resolved:
            if not self.allowed(entry["host"]):
                raise refused(f"the host resolves to {entry['host']}, which is not a public address.")


def _matches(host: str, allowed: str) -> bool:
    return host.endswith(allowed[1:]) if allowed.startswith("*.") else host == allowed


async def _resolve(host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC) -> list[ResolveResult]:
    resolver = ThreadedResolver()
    try:
        async with asyncio.timeout(_RESOLVE_SECONDS):
            return await resolver.resolve(host, port, family)
    except (OSError, TimeoutError):
        raise refused(f"the host '{host}' cannot be resolved.") from None
    finally:
        await resolver.close()


class CheckedResolver(AbstractResolver):
    """aiohttp's resolver for deliveries: a host's addresses, only those allowed (none: the delivery fails
    with the reason); the connection then goes to one of them."""

    def __init__(self, destinations: Destinations) -> None:
        self._destinations = destinations

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        resolved = await _resolve(host, port, family)
        kept = [entry for entry in resolved if self._destinations.allowed(entry["host"])]
        if not kept:
            shown = ", ".join(sorted({entry["host"] for entry in resolved}))
            raise OSError(errno.EACCES, f"the host '{host}' resolves to {shown}: not a public address")
        return kept

    async def close(self) -> None:
        return None
