"""Per-client token buckets, in process, and which client a request comes from.

Each web *instance* (each uvicorn worker) keeps its own buckets, so the effective
limit behind a load balancer is ``instances x rate``. That is enough to blunt a single
noisy client; a shared limit belongs in the proxy in front. Memory is bounded: the
least recently seen clients are forgotten first.

The client is the TCP peer, unless the peer is a trusted proxy
(``OPTOUT_WEB_TRUSTED_PROXIES``): then ``X-Forwarded-For`` is walked from the right,
skipping trusted proxies, and the first address that is not one is the client. Entries
left of it were written by the client itself and are never believed. IPv6 clients are
bucketed by their /64 (one subscriber's whole prefix), IPv4 clients by address.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address
IPV6_BUCKET_PREFIX = 64


def parse_trusted_proxies(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """``["10.0.0.0/8", "2001:db8::/32"]`` -> networks; ``ValueError`` for a bad entry."""
    return tuple(ip_network(cidr.strip(), strict=False) for cidr in cidrs)


def parse_address(text: str) -> Address | None:
    """An IP address as proxies write it (``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``,
    ``[2001:db8::1]:443``); IPv4-mapped IPv6 as IPv4; None when it is not one."""
    value = text.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        value = value[1:end]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        address = ip_address(value)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address in network for network in trusted)


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str | None:
    """The client's address: the peer, or (when the peer is a trusted proxy) the rightmost
    ``X-Forwarded-For`` entry that is not a trusted proxy. ``forwarded_for`` holds every
    X-Forwarded-For header line in order. An unreadable entry ends the walk at the last
    trusted hop; when every hop is trusted, the leftmost one is the client."""
    if peer is None:
        return None
    current = parse_address(peer)
    if current is None or not _trusted(current, trusted):
        return str(current) if current is not None else peer
    hops = [hop.strip() for line in forwarded_for for hop in line.split(",") if hop.strip()]
    for hop in reversed(hops):
        address = parse_address(hop)
        if address is None:
            break
        current = address
        if not _trusted(address, trusted):
            break
    return str(current)


def bucket_key(address: str | None) -> str:
    """The rate-limit bucket of a client address: IPv6 by /64, IPv4 by address."""
    if address is None:
        return "unknown"
    parsed = parse_address(address)
    if parsed is None:
        return address
    if isinstance(parsed, IPv6Address):
        return str(ip_network(f"{parsed}/{IPV6_BUCKET_PREFIX}", strict=False))
    return str(parsed)


class RateLimiter:
    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        monotonic: Callable[[], float],
        max_clients: int = 100_000,
    ) -> None:
        if rate_per_second <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate_per_second
        self.burst = float(burst)
        self.monotonic = monotonic
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def acquire(self, client: str) -> float:
        """Take one token for ``client``: 0.0 when allowed, else seconds until one is free."""
        now = self.monotonic()
        tokens, last = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._remember(client, tokens - 1.0, now)
            return 0.0
        self._remember(client, tokens, now)
        return (1.0 - tokens) / self.rate

    def wait(self, client: str) -> float:
        """Seconds until ``client`` has a token (0.0: it has one now), taking none."""
        if client not in self._buckets:
            return 0.0
        tokens, last = self._buckets[client]
        tokens = min(self.burst, tokens + (self.monotonic() - last) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def _remember(self, client: str, tokens: float, now: float) -> None:
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)
