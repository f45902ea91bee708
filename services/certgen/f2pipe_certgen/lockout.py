"""Guessing defences of enrolment: failed claim checks throttle the address that makes them,
never the device that holds the right code, and a refusal does not say which MACs exist.

MACs are public (they are in the MQTT topics), so nothing keyed by the MAC alone may refuse a
right code: an attacker could then keep any controller from enrolling. Instead, two kinds of
token bucket, in this process's memory:

- per source, the client's address (an IPv6 client per /`ipv6_prefix` network, which one
  subscriber usually holds whole): `source_failures` failed checks in a burst, then one more
  every `source_refill` seconds. A source without a token left is answered `429 locked_out`
  with Retry-After *before* its code is looked at; it costs no scrypt either.
- per MAC, registered or not (so the throttle's behaviour says nothing about which MACs
  exist): `mac_failures` failed checks from any sources, then one more every `mac_refill`
  seconds. A MAC whose budget is spent is under attack: a failure on it takes every token the
  failing source has left (one guess per source per `source_refill`), and nothing else. A
  source with a token and the right code enrols, however hard the MAC is attacked.

Only failures are charged, after the check: concurrent wrong guesses from one source may
overshoot its budget, and then drive its bucket into debt, which it waits off in full. The
tables hold at most `max_entries` keys each (a full bucket is the same as none, so it is
forgotten; past the cap the least recently charged goes first): spraying addresses or MACs
costs at most a bounded amount of memory.

Every refusal of a claim costs what a check of a right code costs: an unknown MAC, or a
controller without a code, is checked against a dummy hash of the same work factor
(`ClaimCheck`). The client sees one answer for all of them; the log and the metrics keep the
real reason.

Memory, not the registry: the MAC table must hold MACs that are not registered, and both
tables are written by whoever sends requests. The price: a restart forgets the buckets, and
each replica keeps its own (with ~79-bit claim codes neither makes guessing worthwhile).
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from f2pipe_certgen.ports import Clock
from f2pipe_certgen.settings import CertgenSettings, IpNetwork
from f2pipe_shared.claimcodes import generate_claim_code, hash_claim_code, verify_claim_code

# A peer address that is not an IP (a Unix socket, a test client's name) is its own source,
# cut to a length that bounds what one table entry can hold.
_MAX_SOURCE_LENGTH = 64


@dataclass(frozen=True)
class ThrottlePolicy:
    source_failures: int = 10
    source_refill: float = 60.0  # seconds per failure forgiven: 60 an hour after the burst
    mac_failures: int = 20
    mac_refill: float = 45.0  # 20 per 15 minutes
    max_entries: int = 50_000  # per table; an entry is ~200 bytes
    ipv6_prefix: int = 64

    @classmethod
    def of(cls, settings: CertgenSettings) -> ThrottlePolicy:
        """CERTGEN_SOURCE_*, CERTGEN_MAC_*, CERTGEN_THROTTLE_ENTRIES, CERTGEN_IPV6_PREFIX."""
        return cls(
            source_failures=settings.certgen_source_failures,
            source_refill=settings.certgen_source_refill,
            mac_failures=settings.certgen_mac_failures,
            mac_refill=settings.certgen_mac_refill,
            max_entries=settings.certgen_throttle_entries,
            ipv6_prefix=settings.certgen_ipv6_prefix,
        )


@dataclass(frozen=True)
class Throttled:
    retry_after: int  # whole seconds until the source has a token again (Retry-After)


@dataclass(slots=True)
class _Bucket:
    tokens: float  # below 0: debt from concurrent failures, waited off before the next try
    at: float  # the clock's time (seconds) `tokens` was counted at


class Buckets:
    """Token buckets by key, `capacity` full, one token back every `refill` seconds; at most
    `max_entries` keys, ordered by their last charge."""

    def __init__(self, capacity: int, refill: float, max_entries: int) -> None:
        self.capacity = capacity
        self.refill = refill
        self.max_entries = max_entries
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def tokens(self, key: str, now: float) -> float:
        bucket = self._buckets.get(key)
        return self.capacity if bucket is None else self._refilled(bucket, now)

    def charge(self, key: str, now: float, *, everything: bool = False) -> float:
        """Take one token (`everything`: all that are left, one at least); return the rest."""
        self._expire(now)
        left = self.tokens(key, now) - 1
        if everything:
            left = min(left, 0.0)
        self._buckets[key] = _Bucket(left, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_entries:
            self._buckets.popitem(last=False)  # the least recently charged
        return left

    def wait(self, key: str, now: float) -> float:
        """Seconds until `key` has a whole token (0: it has one)."""
        return max(0.0, (1 - self.tokens(key, now)) * self.refill)

    def _refilled(self, bucket: _Bucket, now: float) -> float:
        # max(0, …): a clock that steps back gives no tokens, and takes none either.
        return min(self.capacity, bucket.tokens + max(0.0, now - bucket.at) / self.refill)

    def _expire(self, now: float) -> None:
        # The first entry is the longest uncharged: once it is full, it says nothing any more.
        # Everything idle for capacity * refill seconds (plus any debt) is full, so idle
        # entries never stay long whatever the cap.
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if self._refilled(bucket, now) < self.capacity:
                return
            del self._buckets[key]


class Throttle:
    """The policy's two tables, at the clock's time. Used on the event loop only: a check
    and the charge it may lead to never interleave with another request's."""

    def __init__(self, policy: ThrottlePolicy, clock: Clock) -> None:
        self.policy = policy
        self.clock = clock
        entries = policy.max_entries
        self.sources = Buckets(policy.source_failures, policy.source_refill, entries)
        self.macs = Buckets(policy.mac_failures, policy.mac_refill, entries)

    def check(self, source: str) -> Throttled | None:
        """Whether `source` must wait before its next claim is checked."""
        wait = self.sources.wait(source, self._now())
        # Rounded first: 59 s into a 60 s refill is 1 s to go, not 1.0000000000000009.
        return None if wait == 0 else Throttled(max(1, math.ceil(round(wait, 3))))

    def failed(self, source: str, mac: str) -> bool:
        """Charge a failed claim check to the source and the MAC; True when the MAC was under
        attack (its budget spent), and the source lost every token it had left."""
        now = self._now()
        attacked = self.macs.tokens(mac, now) < 1
        self.macs.charge(mac, now)
        self.sources.charge(source, now, everything=attacked)
        return attacked

    def _now(self) -> float:
        return self.clock.now().timestamp()


def client_source(
    peer: str | None,
    forwarded_for: Sequence[str],
    *,
    trusted_proxies: Sequence[IpNetwork] = (),
    ipv6_prefix: int = 64,
) -> str:
    """The throttle's key for a request: the client's address, per network for IPv6.

    The peer of the connection is the client, unless it is a trusted proxy: then the
    X-Forwarded-For hops are read from the right (the nearest proxy's entry) to the first
    address that is not a trusted proxy. What lies left of it was written by the client and
    is not believed; an unreadable hop stops the walk at the proxy that passed it on.
    """
    if peer is None:
        return "unknown"
    client = peer
    if trusted_proxies and _trusted(peer, trusted_proxies):
        hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
        for hop in reversed([hop for hop in hops if hop]):
            if _ip(hop) is None:
                break
            client = hop
            if not _trusted(hop, trusted_proxies):
                break
    return _source_key(client, ipv6_prefix)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(text: str, networks: Sequence[IpNetwork]) -> bool:
    address = _ip(text)
    return address is not None and any(address in network for network in networks)


def _source_key(text: str, ipv6_prefix: int) -> str:
    address = _ip(text)
    if address is None:
        return text[:_MAX_SOURCE_LENGTH]
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    return str(address)


Verifier = Callable[[str, str], bool]


def _dummy_hash() -> str:
    # A code nobody knows, hashed with the same work factor as the registry's codes.
    return hash_claim_code(generate_claim_code())


@dataclass(frozen=True)
class ClaimCheck:
    """A claim code against a controller's stored hash, at the same cost when there is none."""

    verify: Verifier = verify_claim_code
    dummy_hash: str = field(default_factory=_dummy_hash)

    async def matches(self, code: str, stored: str | None) -> bool:
        """True only for a stored hash and its code. Without a stored hash (unknown MAC, no
        code set) the dummy one is checked all the same, so the time taken tells nothing."""
        # scrypt takes ~30 ms of CPU: off the event loop.
        matched = await asyncio.to_thread(self.verify, code, stored or self.dummy_hash)
        return matched and stored is not None
