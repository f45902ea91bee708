"""Per-partition batches of MQTT messages, closed by count, bytes or age."""

from __future__ import annotations

from dataclasses import dataclass, field

from f2pipe_bridge.ports import Clock, Inbound

# Kafka's default message.max.bytes is 1 MB; stay well under it after framing overhead.
MAX_BATCH_BYTES = 900_000


@dataclass
class Batch:
    partition: int
    opened_at: float = 0.0  # the batcher's clock (monotonic) when its first message came
    messages: list[Inbound] = field(default_factory=list)
    size: int = 0


class Batcher:
    def __init__(self, max_messages: int, linger_s: float, clock: Clock) -> None:
        self.max_messages = max_messages
        self.linger_s = linger_s
        self.clock = clock
        self.open: dict[int, Batch] = {}

    def add(self, partition: int, message: Inbound) -> Batch | None:
        """Add a message; return a batch that must be sent first, if adding would overflow."""
        closed = None
        batch = self.open.get(partition)
        cost = len(message.payload) + len(message.topic) + 16
        if batch is not None and batch.size + cost > MAX_BATCH_BYTES:
            closed = self.open.pop(partition)
            batch = None
        if batch is None:
            batch = self.open[partition] = Batch(partition, self.clock.monotonic())
        batch.messages.append(message)
        batch.size += cost
        if closed is None and len(batch.messages) >= self.max_messages:
            closed = self.open.pop(partition)
        return closed

    def due(self) -> list[Batch]:
        """Batches whose linger time has passed."""
        now = self.clock.monotonic()
        ready = [p for p, b in self.open.items() if now - b.opened_at >= self.linger_s]
        return [self.open.pop(p) for p in ready]

    def full(self) -> list[Batch]:
        ready = [p for p, b in self.open.items() if len(b.messages) >= self.max_messages]
        return [self.open.pop(p) for p in ready]

    def drain(self) -> list[Batch]:
        batches = list(self.open.values())
        self.open.clear()
        return batches

    def next_deadline(self) -> float | None:
        if not self.open:
            return None
        return min(b.opened_at for b in self.open.values()) + self.linger_s
