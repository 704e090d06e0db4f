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
import logging
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from gateway import bounds
from gateway.errors import InvalidRequestError

logger = logging.getLogger(__name__)

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_SPECIAL_V6 = tuple(
    ipaddress.IPv6Network(net) for net in ("2001::/23", "2001:db8::/32", "2001:10::/28", "2001:20::/28", "3fff::/20")
)
"""Inside 2000::/3 yet not a destination: IETF protocol assignments, documentation, ORCHID (Teredo, 6to4 and
the public anycast services are judged by the IPv4 address they carry or by ``is_global``)."""
_SPECIAL_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
        "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    )
)  # fmt: skip
"""Not a destination whatever the interpreter's ``is_global`` tables say."""
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
    """IPv4: global and in none of the special ranges; IPv6: the IPv4 address it carries is, else a global
    unicast address (2000::/3) outside the special ranges; nothing else."""
    if isinstance(address, IPv6Address):
        if (inner := _embedded(address)) is not None:
            return is_public(inner)
        if address not in _GLOBAL_UNICAST or any(address in net for net in _SPECIAL_V6):
            return False
    elif any(address in net for net in _SPECIAL_V4):
        return False
    return address.is_global and not address.is_multicast


def _odd_ipv4(host: str) -> bool:
    """A host the C resolver reads as an IPv4 address though it is not a dotted quad (``2130706433``, ``127.1``,
    ``0177.0.0.1``, ``0x7f.1``): refused, so that no HTTP client can take it for a literal and skip the checks."""
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    try:
        return str(IPv4Address(host)) != host
    except ValueError:
        return True


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
        if _odd_ipv4(host):
            raise refused("an IPv4 address must be written as four decimal numbers (a.b.c.d).")
        if self.allowed_hosts and not any(_matches(host, allowed) for allowed in self.allowed_hosts):
            raise refused(f"the host '{host}' is not one this server sends webhooks to.")
        try:
            literal: IPv4Address | IPv6Address | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None and not self.allow_private and not is_public(literal):
            raise refused("the address is not a public address.")
        return parsed

    def allowed(self, address: str) -> bool:
        return self.allow_private or is_public(ipaddress.ip_address(address.split("%", 1)[0]))

    async def check(self, url: str) -> None:
        """The URL may be used and every address its host has now is allowed (an endpoint made or changed)."""
        parsed = self.check_url(url)
        try:
            resolved = await _resolve(parsed.raw_host or "", parsed.port or 0)
        except OSError:
            raise refused("the host cannot be resolved.") from None
        for entry in resolved:
            if not self.allowed(entry["host"]):  # the address stays in our log: it may be the operator's network
                logger.info("webhook URL refused: %s resolves to %s", parsed.raw_host, entry["host"])
                raise refused("the host resolves to an address that is not public.")


def _matches(host: str, allowed: str) -> bool:
    return host.endswith(allowed[1:]) if allowed.startswith("*.") else host == allowed


async def _resolve(host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC) -> list[ResolveResult]:
    """The host's addresses; an ``OSError`` when it has none (in time)."""
    resolver = ThreadedResolver()
    try:
        async with asyncio.timeout(_RESOLVE_SECONDS):
            return await resolver.resolve(host, port, family)
    except TimeoutError:
        raise OSError(errno.ETIMEDOUT, f"the host '{host}' cannot be resolved") from None
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
        resolved = await _resolve(host, port, family)  # an OSError is a failed try like any connection error
        kept = [entry for entry in resolved if self._destinations.allowed(entry["host"])]
        if not kept:
            logger.info("webhook delivery refused: %s resolves to %s", host, [entry["host"] for entry in resolved])
            raise OSError(errno.EACCES, f"the host '{host}' does not resolve to a public address")
        return kept

    async def close(self) -> None:
        return None
