"""The live stream's fan-out: every `GET /v1/stream` client is a `Subscriber` with a bounded
buffer, and `Hub.deliver` / `Hub.publish` put each item into the buffers of the clients that
asked for its controller.

An item is encoded once (one Server-Sent Events frame, shared by every client), so 100 clients
cost 100 list appends per Kafka record, not 100 JSON encodings per reading. Memory is bounded
whatever the clients do: a client holds at most `buffer` items waiting (plus, once, the
delivery that overflowed an empty buffer); the one whose buffer is full is dropped from the
hub at once, its buffer freed, and told `overflow` (stream.py) — it never slows the others.
Everything here runs on the event loop: no locks.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from f2pipe_api.metrics import ApiMetrics

log = logging.getLogger(__name__)

# (controller MAC or None when the registry does not know the device, one encoded SSE frame)
Item = tuple[str | None, bytes]


def frame(event: str, data: dict[str, Any]) -> bytes:
    """One Server-Sent Events frame: `event:` then one `data:` line (JSON has no newline)."""
    body = json.dumps(data, separators=(",", ":"), default=str)
    return f"event: {event}\ndata: {body}\n\n".encode()


@dataclass(eq=False)
class Subscriber:
    """One stream client: its filter, what waits to be sent, and whether it overflowed."""

    macs: frozenset[str] | None  # None: every controller
    pending: list[bytes] = field(default_factory=list)
    count: int = 0  # items in `pending`
    overflowed: bool = False
    closed: bool = False  # the api is shutting down: end the stream
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Set by the stream writing to this client: interrupts a write the client does not take.
    on_overflow: Callable[[], None] = lambda: None

    def take(self) -> tuple[bytes, int]:
        """Everything pending as one chunk (one write to the socket), and how many items."""
        chunk, n = b"".join(self.pending), self.count
        self.pending.clear()
        self.count = 0
        self.wake.clear()
        return chunk, n


class Hub:
    """The stream clients and the items on their way to them."""

    def __init__(
        self, metrics: ApiMetrics, *, buffer: int, max_clients: int, heartbeat: float = 15.0
    ) -> None:
        self.metrics = metrics
        self.buffer = buffer
        self.max_clients = max_clients
        self.heartbeat = heartbeat
        self.subscribers: set[Subscriber] = set()

    def subscribe(self, macs: Iterable[str] | None) -> Subscriber | None:
        """A new client; None when API_STREAM_MAX_CLIENTS are connected already."""
        if len(self.subscribers) >= self.max_clients:
            return None
        sub = Subscriber(None if macs is None else frozenset(macs))
        self.subscribers.add(sub)
        self.metrics.stream_clients.set(len(self.subscribers))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        self.metrics.stream_clients.set(len(self.subscribers))

    @property
    def idle(self) -> bool:
        """No client: the feed need not decode what it reads."""
        return not self.subscribers

    def deliver(self, items: Sequence[Item]) -> None:
        """Items from the processed topic, in order: to every client that wants them."""
        if not items:
            return
        everything = b"".join(f for _, f in items)
        for sub in list(self.subscribers):
            if sub.macs is None:
                self._put(sub, everything, len(items))
            else:
                mine = [f for mac, f in items if mac in sub.macs]
                if mine:
                    self._put(sub, b"".join(mine), len(mine))

    def publish(self, kind: str, mac: str, data: dict[str, Any]) -> None:
        """Push one item that is not from Kafka (the commands module: kind "command", a
        command's status change). Call it on the event loop; it never blocks."""
        self.deliver([(mac, frame(kind, {"mac": mac, **data}))])

    def close_all(self) -> None:
        """End every stream (the api is shutting down): each client gets `shutdown` and the
        end of its response, so the server need not wait out its graceful timeout."""
        for sub in list(self.subscribers):
            sub.closed = True
            sub.wake.set()

    def _put(self, sub: Subscriber, chunk: bytes, n: int) -> None:
        if sub.count and sub.count + n > self.buffer:
            self._overflow(sub)
            return
        sub.pending.append(chunk)
        sub.count += n
        sub.wake.set()

    def _overflow(self, sub: Subscriber) -> None:
        sub.overflowed = True
        sub.pending.clear()  # freed now, whatever the client's socket does
        sub.count = 0
        sub.wake.set()
        self.unsubscribe(sub)
        self.metrics.stream_overflows.inc()
        sub.on_overflow()
        log.warning("a stream client did not keep up: disconnected", extra={"buffer": self.buffer})
