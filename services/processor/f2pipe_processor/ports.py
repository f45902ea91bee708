"""What the processor talks to across a process boundary, as small protocols.

Production adapters satisfy them structurally (`output.KafkaOutput`, `registry.Registry`,
`resolver.RedisCache`, `invalidation.RegistryListener`, `latest.LatestTable`, `time.time`);
unit tests pass fakes.
`main.build()` is the one place that picks the real ones.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from f2pipe_processor.decoder import LatestValues
    from f2pipe_processor.output import OutRecord
    from f2pipe_processor.registry import Resolved, TemplateRow
    from f2pipe_shared.topics import Topic


class Clock(Protocol):
    """Seconds since the Unix epoch (``time.time``): the device-timestamp window's now."""

    def __call__(self) -> float: ...


class OutputProducer(Protocol):
    """Kafka, as the service uses it: ``deliver`` returns once every record (or its
    fallback) is acknowledged, retrying meanwhile; ``failures`` counts consecutive failed
    deliveries (for /healthz)."""

    @property
    def failures(self) -> int: ...

    async def deliver(self, records: Sequence[OutRecord]) -> None: ...


class RegistrySource(Protocol):
    """The registry database, as the resolver asks it (the public methods of `Registry`).

    ``locations`` and ``templates`` wait while the database is down (never give up);
    ``macs_for`` makes one attempt and raises `registry.RegistryUnavailable`.
    """

    async def locations(self, topics: Sequence[Topic]) -> dict[str, Resolved]: ...

    async def templates(self, ids: Iterable[int]) -> dict[int, TemplateRow]: ...

    async def macs_for(
        self, *, controllers: Iterable[int], connectors: Iterable[int], devices: Iterable[int]
    ) -> set[str]: ...


class RegistryStatus(Protocol):
    """Whether the registry database answers (``Registry``), for /healthz."""

    @property
    def down_since(self) -> float | None: ...

    @property
    def last_error(self) -> str | None: ...


class ChangeFeed(Protocol):
    """Registry changes applied to the caches (``invalidation.RegistryListener``)."""

    @property
    def connected(self) -> bool: ...

    async def run(self) -> None: ...


class LookupCache(Protocol):
    """The shared middle layer (Redis): None/False instead of raising when it is down."""

    @property
    def up(self) -> bool: ...

    @property
    def last_error(self) -> str | None: ...

    async def get_locations(self, topics: Collection[Topic]) -> dict[str, Resolved] | None: ...

    async def put_locations(self, items: Mapping[Topic, Resolved]) -> None: ...

    async def get_templates(self, ids: Collection[int]) -> dict[int, TemplateRow] | None: ...

    async def put_templates(self, rows: Mapping[int, TemplateRow]) -> None: ...

    async def delete(self, macs: Iterable[str] = (), template_ids: Iterable[int] = ()) -> None: ...

    async def flush(self) -> None: ...


class CacheHealth(Protocol):
    """Whether the shared cache answers (``RedisCache``), for /healthz and ``redis_up``:
    ``probe`` asks it now, whatever the lookups do (a warm memory cache asks it nothing)."""

    @property
    def up(self) -> bool: ...

    @property
    def last_error(self) -> str | None: ...

    async def probe(self) -> bool: ...


class LatestStore(Protocol):
    """The last-value table: a batch's newest values in, changelog records out per flush."""

    def write(self, partition: int, latest: LatestValues) -> None: ...

    def flush(self) -> list[OutRecord]: ...
