"""Registry lookups through three layers: an in-process dict, Redis, PostgreSQL.

Most messages hit the dict (a device sends every 30 s, its topic was seen before); the
misses of one batch go to Redis together (one pipelined round trip), and what Redis lacks
goes to PostgreSQL in one query. Answers travel back up: PostgreSQL's into Redis and the
dict, Redis's into the dict. Negative answers (unknown MAC, nothing on that pin) are cached
too, so a misconfigured device costs one query, not one per message.

Redis keys (prefix ``PROCESSOR_REDIS_PREFIX``):
- ``loc:<mac>``, a hash ``J3/sensor-2`` -> location, so a change to one controller deletes
  one key;
- ``tpl:<template id>`` -> the template with its datapoints.

Redis is an optimisation: when it fails, lookups go straight to PostgreSQL for
``PROCESSOR_REDIS_RETRY_SECONDS``, then Redis is tried again. Every call has a short timeout
(``PROCESSOR_REDIS_TIMEOUT_SECONDS``): a frozen Redis costs one timeout, not one per message.
A probe in the background (``RedisCache.probe``, every ``PROCESSOR_REDIS_PROBE_SECONDS``)
PINGs it whatever the lookups do: with a warm memory cache no lookup reaches Redis, and
/healthz and ``redis_up`` must still tell the truth. While Redis stays down each failed probe
extends the bypass, so the hot path does not try it again; a probe that gets an answer ends
it. Invalidation that could not reach Redis leaves it "dirty", and the first contact after
the outage empties our keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    NoPermissionError,
    RedisError,
)

from f2pipe_processor.metrics import ProcessorMetrics
from f2pipe_processor.ports import LookupCache, RegistrySource
from f2pipe_processor.registry import (
    CompiledTemplate,
    Location,
    RegistryUnavailable,
    Resolved,
    TemplateRow,
    location_field,
    pack_resolved,
    unpack_resolved,
)
from f2pipe_shared.topics import Topic, parse_topic

log = logging.getLogger(__name__)
# A wrong user or password, or an ACL that lacks a command: a setting, not an outage.
REFUSED = (AuthenticationError, AuthenticationWrongNumberOfArgsError, NoPermissionError)


@dataclass(frozen=True, slots=True)
class Change:
    """One ``registry_changed`` notification (see f2pipe/migrations/0003_registry_notify.sql)."""

    table: str
    ids: tuple[int, ...] | None  # None: TRUNCATE, or too many rows to list
    parents: tuple[Any, ...] = ()  # connector_ids, controller_ids, template_ids, macs…


@dataclass(slots=True)
class Lookup:
    """What one batch resolved: topic string -> location, template id -> template."""

    locations: dict[str, Resolved]
    templates: dict[int, CompiledTemplate]
    # Distinct keys looked up per layer, for the benchmark's cost split and tests.
    stats: dict[str, int] = field(default_factory=dict)


class RedisCache:
    """The shared middle layer. Every method returns None/False instead of raising."""

    def __init__(
        self,
        url: str,
        prefix: str,
        ttl_seconds: int,
        retry_seconds: float,
        timeout: float = 0.5,
        *,
        metrics: ProcessorMetrics,
        credentials: Mapping[str, str] | None = None,
    ) -> None:
        auth = dict(credentials or {})
        self._client = aioredis.Redis.from_url(
            url,
            username=auth.get("username"),
            password=auth.get("password"),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One attempt: a retry would only delay the fall-back to PostgreSQL.
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._prefix = prefix
        self._ttl = ttl_seconds
        self._retry = retry_seconds
        self._down_until = 0.0  # monotonic; 0 = up
        self._down_since = 0.0  # monotonic time of the failure that began the outage
        self._dirty = False  # an invalidation could not delete: flush on recovery
        self.last_error: str | None = None
        self._metrics = metrics
        metrics.redis_up.set(1)

    @property
    def up(self) -> bool:
        return self._down_until == 0.0

    async def close(self) -> None:
        await self._client.aclose()

    def _loc_key(self, mac: str) -> str:
        return f"{self._prefix}loc:{mac}"

    def _tpl_key(self, template_id: int) -> str:
        return f"{self._prefix}tpl:{template_id}"

    async def _available(self) -> bool:
        """Up, or the retry interval is over and Redis answers again (flushed if dirty)."""
        if self._down_until == 0.0:
            return True
        if time.monotonic() < self._down_until:
            return False
        return await self.probe()

    async def probe(self) -> bool:
        """PING Redis now (up or not): whether it answered. The background probe calls it."""
        try:
            await self._client.ping()
            if self._dirty:
                await self._flush_keys()
                self._dirty = False
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return False
        if self._down_until != 0.0:
            down = time.monotonic() - self._down_since
            self._down_until = 0.0
            self.last_error = None
            log.info("Redis is back: lookups use it again", extra={"down_seconds": round(down, 1)})
        self._metrics.redis_up.set(1)
        return True

    def _failed(self, exc: BaseException) -> None:
        if self._down_until == 0.0 and isinstance(exc, REFUSED):
            # Not an outage: a setting is wrong. Name it (never the password) and go on
            # without the cache, trying again every retry interval.
            log.error(
                "Redis refused REDIS_USERNAME/REDIS_PASSWORD, or the user may not run a "
                "command of the cache (its ACL): looking up in PostgreSQL directly",
                extra={"error": f"{type(exc).__name__}: {exc}", "retry_in_s": self._retry},
            )
        elif self._down_until == 0.0:
            log.warning(
                "Redis unavailable: looking up in PostgreSQL directly",
                extra={"error": f"{type(exc).__name__}: {exc}", "retry_in_s": self._retry},
            )
        if self._down_until == 0.0:
            self._down_since = time.monotonic()
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._down_until = time.monotonic() + self._retry
        self._metrics.redis_up.set(0)

    async def get_locations(self, topics: Collection[Topic]) -> dict[str, Resolved] | None:
        if not await self._available():
            return None
        by_mac: dict[str, list[Topic]] = {}
        for topic in topics:
            by_mac.setdefault(topic.mac, []).append(topic)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for mac, group in by_mac.items():
                    pipe.hmget(self._loc_key(mac), [location_field(t) for t in group])
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        found: dict[str, Resolved] = {}
        for group, values in zip(by_mac.values(), replies, strict=True):
            for topic, raw in zip(group, values, strict=True):
                if raw is not None:
                    found[topic.format()] = unpack_resolved(msgpack.unpackb(raw))
        return found

    async def put_locations(self, items: Mapping[Topic, Resolved]) -> None:
        if not items or not await self._available():
            return
        by_mac: dict[str, dict[str, bytes]] = {}
        for topic, value in items.items():
            by_mac.setdefault(topic.mac, {})[location_field(topic)] = msgpack.packb(
                pack_resolved(value)
            )
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for mac, mapping in by_mac.items():
                    key = self._loc_key(mac)
                    pipe.hset(key, mapping=mapping)
                    # NX: the TTL runs from the first write, so a busy controller's hash
                    # still expires now and then (the safety net behind NOTIFY).
                    pipe.expire(key, self._ttl, nx=True)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def get_templates(self, ids: Collection[int]) -> dict[int, TemplateRow] | None:
        if not await self._available():
            return None
        ordered = list(ids)
        try:
            values = await self._client.mget([self._tpl_key(i) for i in ordered])
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        return {
            i: msgpack.unpackb(raw)
            for i, raw in zip(ordered, values, strict=True)
            if raw is not None
        }

    async def put_templates(self, rows: Mapping[int, TemplateRow]) -> None:
        if not rows or not await self._available():
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for template_id, row in rows.items():
                    pipe.set(self._tpl_key(template_id), msgpack.packb(row), ex=self._ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def delete(self, macs: Iterable[str] = (), template_ids: Iterable[int] = ()) -> None:
        keys = [self._loc_key(m) for m in macs] + [self._tpl_key(i) for i in template_ids]
        if not keys:
            return
        if not await self._available():
            self._dirty = True
            return
        try:
            await self._client.unlink(*keys)
        except (RedisError, OSError) as exc:
            self._dirty = True
            self._failed(exc)

    async def flush(self) -> None:
        """Delete every key of ours (listener reconnect, TRUNCATE, unmappable change)."""
        if not await self._available():
            self._dirty = True
            return
        try:
            await self._flush_keys()
        except (RedisError, OSError) as exc:
            self._dirty = True
            self._failed(exc)

    async def _flush_keys(self) -> None:
        batch: list[Any] = []
        async for key in self._client.scan_iter(match=f"{self._prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await self._client.unlink(*batch)
                batch.clear()
        if batch:
            await self._client.unlink(*batch)


@dataclass(eq=False)
class Resolver:
    """Topic -> device and template, through memory, Redis and PostgreSQL.

    A lock serialises cache misses with invalidations: a lookup that read Redis or
    PostgreSQL just before a change was applied must not put the old answer back.
    """

    registry: RegistrySource
    redis: LookupCache | None
    local_size: int = 500_000
    _: KW_ONLY
    metrics: ProcessorMetrics
    _locations: dict[str, Resolved] = field(default_factory=dict, init=False, repr=False)
    _templates: dict[int, CompiledTemplate] = field(default_factory=dict, init=False, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    @property
    def cached(self) -> int:
        return len(self._locations) + len(self._templates)

    async def resolve(self, topics: Mapping[str, Topic]) -> Lookup:
        """Every topic given (topic string -> parsed) resolved, plus the templates they use."""
        locations: dict[str, Resolved] = {}
        missing: dict[str, Topic] = {}
        local = self._locations
        for key, topic in topics.items():
            value = local.get(key)
            if value is None:
                missing[key] = topic
            else:
                locations[key] = value
        stats = {"memory_hits": len(locations), "memory_misses": len(missing)}
        if missing:
            async with self._lock:
                await self._fill_locations(missing, locations, stats)
        wanted = {
            loc.template_id
            for loc in locations.values()
            if type(loc) is Location and loc.template_id is not None
        }
        templates: dict[int, CompiledTemplate] = {}
        missing_templates: set[int] = set()
        for template_id in wanted:
            template = self._templates.get(template_id)
            if template is None:
                missing_templates.add(template_id)
            else:
                templates[template_id] = template
        if missing_templates:
            async with self._lock:
                await self._fill_templates(missing_templates, templates)
        lookups = self.metrics.cache_lookups
        lookups.labels("memory", "hit").inc(
            stats["memory_hits"] + len(wanted) - len(missing_templates)
        )
        lookups.labels("memory", "miss").inc(stats["memory_misses"] + len(missing_templates))
        return Lookup(locations, templates, stats)

    async def _fill_locations(
        self, missing: dict[str, Topic], out: dict[str, Resolved], stats: dict[str, int]
    ) -> None:
        # Another batch may have filled some of them while we waited for the lock.
        for key in [k for k in missing if k in self._locations]:
            out[key] = self._locations[key]
            del missing[key]
        if not missing:
            return
        metrics = self.metrics
        from_redis: dict[str, Resolved] | None = None
        if self.redis is not None:
            started = time.perf_counter()
            from_redis = await self.redis.get_locations(missing.values())
            if from_redis is not None:
                metrics.lookup_seconds.labels("redis").observe(time.perf_counter() - started)
                metrics.cache_lookups.labels("redis", "hit").inc(len(from_redis))
                metrics.cache_lookups.labels("redis", "miss").inc(len(missing) - len(from_redis))
                stats["redis_hits"] = len(from_redis)
                self._store_locations(from_redis)
                out.update(from_redis)
                for key in from_redis:
                    del missing[key]
            else:
                metrics.redis_fallbacks.inc(len(missing))
                stats["redis_fallbacks"] = len(missing)
        if not missing:
            return
        started = time.perf_counter()
        from_db = await self.registry.locations(list(missing.values()))
        metrics.lookup_seconds.labels("postgres").observe(time.perf_counter() - started)
        metrics.cache_lookups.labels("postgres", "hit").inc(len(from_db))
        stats["postgres"] = len(from_db)
        self._store_locations(from_db)
        out.update(from_db)
        if self.redis is not None:
            await self.redis.put_locations({missing[k]: v for k, v in from_db.items()})

    async def _fill_templates(self, missing: set[int], out: dict[int, CompiledTemplate]) -> None:
        for template_id in [t for t in missing if t in self._templates]:
            out[template_id] = self._templates[template_id]
            missing.discard(template_id)
        if not missing:
            return
        metrics = self.metrics
        rows: dict[int, TemplateRow] = {}
        if self.redis is not None:
            cached = await self.redis.get_templates(missing)
            if cached is not None:
                metrics.cache_lookups.labels("redis", "hit").inc(len(cached))
                metrics.cache_lookups.labels("redis", "miss").inc(len(missing) - len(cached))
                rows.update(cached)
            else:
                metrics.redis_fallbacks.inc(len(missing))
        still = missing - rows.keys()
        if still:
            started = time.perf_counter()
            from_db = await self.registry.templates(still)
            metrics.lookup_seconds.labels("postgres").observe(time.perf_counter() - started)
            metrics.cache_lookups.labels("postgres", "hit").inc(len(from_db))
            rows.update(from_db)
            if self.redis is not None:
                await self.redis.put_templates(from_db)
        for template_id, row in rows.items():
            template = CompiledTemplate.from_row(row)
            self._templates[template_id] = template
            out[template_id] = template

    def _store_locations(self, values: Mapping[str, Resolved]) -> None:
        if len(self._locations) + len(values) > self.local_size:
            # Simplest bound: start over. At one entry per topic of the fleet this only
            # happens when the setting is far below the fleet size.
            log.warning("in-process registry cache full: cleared", extra={"size": self.local_size})
            self._locations.clear()
        self._locations.update(values)

    async def invalidate(self, change: Change) -> None:
        """Forget what ``change`` may have made wrong, here and in Redis."""
        async with self._lock:
            self.metrics.invalidations.labels(change.table).inc()
            if change.ids is None:
                await self._flush_locked()
                return
            ids = set(change.ids)
            parents = set(change.parents)
            if change.table in ("datapoints", "device_templates"):
                template_ids = parents if change.table == "datapoints" else ids
                for template_id in template_ids:
                    self._templates.pop(template_id, None)
                if self.redis is not None:
                    await self.redis.delete(template_ids=template_ids)
                return
            controllers: set[int] = set()
            connectors: set[int] = set()
            devices: set[int] = set()
            macs: set[str] = set()
            if change.table == "pins":
                connectors = parents
            elif change.table == "connectors":
                connectors, controllers = ids, parents
            elif change.table == "devices":
                # A device row may be a controller (its MAC is in parents) or a sensor.
                devices, controllers = ids, ids
                macs = {m for m in parents if isinstance(m, str)}
            else:
                return
            dropped_macs = self._drop_local(macs, controllers, connectors, devices)
            if self.redis is None:
                return
            try:
                macs |= await self.registry.macs_for(
                    controllers=controllers, connectors=connectors, devices=devices
                )
            except RegistryUnavailable as exc:
                # Cannot tell which controllers are affected: forget everything instead.
                log.warning("cannot map a registry change to MACs: flushing the caches",
                            extra={"error": str(exc)})  # fmt: skip
                await self._flush_locked()
                return
            await self.redis.delete(macs=macs | dropped_macs)

    def _drop_local(
        self, macs: set[str], controllers: set[int], connectors: set[int], devices: set[int]
    ) -> set[str]:
        """Drop matching in-process entries; return the MACs they belonged to."""
        # A linear pass: registry changes are rare, and one index per id kind would cost
        # memory and bookkeeping on every insert.
        doomed = []
        for key, value in self._locations.items():
            mac = parse_topic(key).mac  # every key was parsed on its way in
            if (
                mac in macs
                or value.controller_id in controllers
                or value.connector_id in connectors
                or (type(value) is Location and value.device_id in devices)
            ):
                doomed.append((key, mac))
        for key, _ in doomed:
            del self._locations[key]
        return {mac for _, mac in doomed}

    async def flush(self) -> None:
        async with self._lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        self.metrics.cache_flushes.inc()
        self._locations.clear()
        self._templates.clear()
        if self.redis is not None:
            await self.redis.flush()
