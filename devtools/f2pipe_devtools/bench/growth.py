"""How cost grows: the registry at 1,000, 10,000 and 100,000 controllers, and a readings table
of 50 M rows (`--quick`: 1,000 and 10,000 controllers, 5 M rows).

Starts its own PostgreSQL (TimescaleDB when installed; `durable=False` as the test servers
run) and Redis, in a temporary directory. Two databases on the one server: `growth` (the
registry that grows, then the readings table that is filled) and `empty` (migrated only: the
sink's reference).

1. **Registry.** The fleet grows by set-based INSERTs (seed-demo's layout: 4 connectors, 12
   devices on pins per controller; the row triggers fire, no claim codes). At each size the
   processor's own `Resolver` (memory -> Redis -> PostgreSQL, the real classes) resolves the
   fleet's topics in batches of BATCH messages, as one worker that owns every partition:
   - cold: every topic once, memory and Redis empty (a first start);
   - steady: WINDOW_S seconds of the fleet's traffic (sensors every 30 s, other devices every
     300 s) after that warm-up;
   - restart: the same traffic through a new Resolver (memory empty, Redis warm);
   - memory: a new Resolver filled from Redis under tracemalloc: what the cache retains.
   Hit ratios count distinct topics per batch, as the processor's `cache_lookups` metric
   does. Redis `used_memory` after the warm-up, and the Grafana variable queries (which list
   the registry) at each size.
2. **Sink.** The readings of 1,000 controllers' sensors (15,000 series) every 30 s, back from
   a fixed END, INSERT ... SELECT generate_series in the database; then the sink's `Writer`
   writes the same batches (new keys after END) into `empty` and into `growth`, alternating
   run by run; the ratio is taken per pair. Three times: with the harness's shared_buffers
   (128MB), with a quarter of the RAM (as timescaledb-tune sets it in the deployed image),
   and without the index readings_device_time (a diagnosis: the last thing the suite does).
   TimescaleDB's policy jobs are paused in both databases so a compression or refresh job
   does not land in one run only; the hourly aggregate is refreshed once after the fill, as
   its policy would have done. Before that, what the rate depends on: databases whose
   written chunk holds the fleet's last 10, 30, 60, 120 and 240 minutes, each against an
   empty chunk (`measure_written_chunk`). When the chunk interval makes END begin a chunk
   (`--chunk-interval '30 minutes'`), the runs start in a new chunk and may cross into the next.
3. **Grafana.** The SQL of every panel of deploy/grafana/dashboards that reads readings, the
   macros expanded as Grafana does (TimescaleDB on), for one controller with all its devices
   and datapoints, over the last 6 and 24 hours before END: median ms per panel, and again
   with `SET jit = off`. The EXPLAIN (ANALYZE, BUFFERS) of the 24 h ones and of any over
   SLOW_MS is written next to the JSON (the slow ones printed too).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import re
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import psycopg
import redis
from psycopg.rows import TupleRow

from f2pipe.migrate import apply_migrations
from f2pipe.seed import CONNECTOR_MODES, LAYOUT, seed_demo
from f2pipe_devtools.bench.report import Measurement, Report
from f2pipe_devtools.bench.sink import Batch, Method, writer_method
from f2pipe_devtools.servers import PostgresServer, RedisServer
from f2pipe_devtools.servers.postgres import postgres_bin_dir, timescaledb_installed
from f2pipe_processor.metrics import ProcessorMetrics
from f2pipe_processor.registry import Registry
from f2pipe_processor.resolver import RedisCache, Resolver
from f2pipe_processor.settings import ProcessorSettings
from f2pipe_shared.records import ProcessedBatch, Reading, encode_processed_batch
from f2pipe_shared.topics import parse_topic
from f2pipe_sink.batch import take

Connection = psycopg.Connection[TupleRow]
K = TypeVar("K")  # what alternating_rates names its writers by

BASE_MAC = 0x02F3_0000_0000  # locally administered; no clash with seed-demo or the importer
BATCH = 500  # messages per raw record, as the bridge batches them
WINDOW_S = 60.0  # seconds of the fleet's traffic per steady / restart window
MIN_WINDOW_BATCHES = 40
SENSOR_PERIOD_S = 30.0
OTHER_PERIOD_S = 300.0
READING_PERIOD_US = 30_000_000
READING_CONTROLLERS = 1_000  # whose sensors fill the readings table
FILL_TICKS = 720  # ticks per INSERT statement: 6 h of readings
END = datetime(2026, 12, 5, 20, 0, tzinfo=UTC)  # the fill ends here; the sink writes after
END_US = int(END.timestamp() * 1_000_000)
RECORD_ROWS = 1_250
BATCH_ROWS = 5_000  # SinkSettings.batch_size's default
SINK_ROWS = 150_000  # per sink run: 10 ticks of the 15,000 series
HARNESS_SHARED_BUFFERS = "128MB"  # what PostgresServer runs with (the tests' setting)
RANGES_H = (6, 24)
MAX_DATA_POINTS = 1_000  # a wide time series panel's width in points
SLOW_MS = 500.0
DASHBOARDS = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "dashboards"
SQL_DATASOURCE = "grafana-postgresql-datasource"


# -- pure logic: traffic, ratios, percentiles -------------------------------------------------


def mac_of(i: int) -> str:
    return f"{BASE_MAC + i:012x}"


def fleet_topics(macs: Iterable[str]) -> tuple[list[str], list[float]]:
    """Every device topic of seed-demo's layout for each MAC, and how often each publishes
    (messages/s): sensors every SENSOR_PERIOD_S, the others every OTHER_PERIOD_S."""
    slots = []
    for slot in LAYOUT:
        stem = slot.component.rstrip("0123456789").rstrip("-")
        kind = "tele" if stem in ("sensor", "reader") else "stat"
        rate = 1 / SENSOR_PERIOD_S if stem == "sensor" else 1 / OTHER_PERIOD_S
        where = f"{CONNECTOR_MODES[slot.connector]}/{slot.connector}/{slot.component}"
        slots.append((kind, where, rate))
    topics, rates = [], []
    for mac in macs:
        for kind, where, rate in slots:
            topics.append(f"{kind}/f2-{mac}/{where}")
            rates.append(rate)
    return topics, rates


def window_batches(rates: Sequence[float], seconds: float, batch: int = BATCH) -> int:
    """Batches of `batch` messages the fleet sends in `seconds` (at least MIN_WINDOW_BATCHES)."""
    return max(MIN_WINDOW_BATCHES, round(sum(rates) * seconds / batch))


def traffic(
    topics: Sequence[str], rates: Sequence[float], batches: int, rng: random.Random
) -> list[list[str]]:
    """`batches` batches of BATCH messages, each topic drawn as often as its device sends."""
    cumulative = list(_accumulate(rates))
    return [rng.choices(topics, cum_weights=cumulative, k=BATCH) for _ in range(batches)]


def _accumulate(values: Iterable[float]) -> Iterator[float]:
    total = 0.0
    for v in values:
        total += v
        yield total


def every_topic_once(topics: Sequence[str], rng: random.Random) -> list[list[str]]:
    """Every topic once, shuffled, in batches of BATCH: a first start meeting the whole fleet."""
    order = list(topics)
    rng.shuffle(order)
    return [order[i : i + BATCH] for i in range(0, len(order), BATCH)]


@dataclass(frozen=True)
class LayerShares:
    """Distinct topics looked up per batch, summed, and where they were answered."""

    lookups: int
    memory: int
    redis: int
    postgres: int

    @property
    def memory_hit_ratio(self) -> float:
        return self.memory / self.lookups if self.lookups else 0.0

    @property
    def redis_share(self) -> float:
        return self.redis / self.lookups if self.lookups else 0.0

    @property
    def postgres_share(self) -> float:
        return self.postgres / self.lookups if self.lookups else 0.0


def layer_shares(stats: Iterable[Mapping[str, int]]) -> LayerShares:
    """Sum the Resolver's per-batch `Lookup.stats`. A miss the lock wait found filled by
    another batch counts as a memory hit of that batch's caller, as the processor does not
    see it either: lookups = memory hits + memory misses."""
    memory = misses = redis_hits = postgres = 0
    for s in stats:
        memory += s.get("memory_hits", 0)
        misses += s.get("memory_misses", 0)
        redis_hits += s.get("redis_hits", 0)
        postgres += s.get("postgres", 0)
    return LayerShares(memory + misses, memory, redis_hits, postgres)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks (numpy's default)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# -- pure logic: Grafana's SQL ----------------------------------------------------------------


class PanelQuery(NamedTuple):
    dashboard: str
    panel: str
    ref: str
    sql: str


class TimeRange(NamedTuple):
    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


def panel_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """The raw SQL of every PostgreSQL target of every panel (rows' nested panels too)."""
    title = str(dashboard.get("title", ""))
    found = []
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            source = target.get("datasource") or panel.get("datasource") or {}
            if source.get("type") == SQL_DATASOURCE and target.get("rawSql"):
                ref = str(target.get("refId", ""))
                found.append(PanelQuery(title, str(panel.get("title", "")), ref, target["rawSql"]))
    return found


def _panels(panels: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def variable_queries(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """Template variable name -> its SQL (query variables on the PostgreSQL datasource)."""
    found = {}
    for var in dashboard.get("templating", {}).get("list", []):
        source = var.get("datasource") or {}
        if var.get("type") == "query" and source.get("type") == SQL_DATASOURCE:
            query = var.get("query")
            found[var["name"]] = query if isinstance(query, str) else query.get("rawSql", "")
    return found


# Grafana's kbn.roundInterval: (below this many ms, use this interval).
_ROUNDING: tuple[tuple[float, str], ...] = (
    (15, "10ms"), (35, "20ms"), (75, "50ms"), (150, "100ms"), (350, "200ms"), (750, "500ms"),
    (1_500, "1s"), (3_500, "2s"), (7_500, "5s"), (12_500, "10s"), (17_500, "15s"),
    (25_000, "20s"), (45_000, "30s"), (90_000, "1m"), (210_000, "2m"), (450_000, "5m"),
    (750_000, "10m"), (1_050_000, "15m"), (1_500_000, "20m"), (2_700_000, "30m"),
    (5_400_000, "1h"), (9_000_000, "2h"), (16_200_000, "3h"), (32_400_000, "6h"),
    (86_400_000, "12h"), (604_800_000, "1d"), (1_814_400_000, "1w"), (3_628_800_000, "30d"),
)  # fmt: skip
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def grafana_interval(range_seconds: float, max_data_points: int = MAX_DATA_POINTS) -> str:
    """$__interval as Grafana computes it: the range over the panel's points, rounded."""
    ms = range_seconds * 1000 / max_data_points
    for below, interval in _ROUNDING:
        if ms < below:
            return interval
    return "1y"


def interval_seconds(interval: str) -> float:
    found = re.fullmatch(r"(\d+)(ms|s|m|h|d|w|y)", interval)
    if not found:
        raise ValueError(f"not a Grafana interval: {interval!r}")
    if found[2] == "y":
        return int(found[1]) * 365 * 86400.0
    return int(found[1]) * _UNIT_S[found[2]]


def sql_list(values: Sequence[object]) -> str:
    """A multi-value variable as Grafana's SQL datasources interpolate it: quoted, commas."""
    return ",".join("'" + str(v).replace("'", "''") + "'" for v in values)


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(sql: str, when: TimeRange, variables: Mapping[str, Sequence[object]]) -> str:
    """Grafana's PostgreSQL macros and template variables, expanded as Grafana does with
    `timescaledb: true` (deploy/grafana/provisioning/datasources/f2pipe.yml)."""
    interval = grafana_interval(when.seconds)
    seconds = interval_seconds(interval)
    between = f"BETWEEN '{_stamp(when.start)}' AND '{_stamp(when.end)}'"

    def group(match: re.Match[str], alias: bool) -> str:
        column, size = match[1].strip(), match[2].strip()
        step = seconds if size in ("$__interval", "${__interval}") else interval_seconds(size)
        bucket = f"time_bucket('{step:g}s',{column})"
        return f'{bucket} AS "time"' if alias else bucket

    out = re.sub(r"\$__timeFilter\(([^)]*)\)", lambda m: f"{m[1].strip()} {between}", sql)
    out = re.sub(r"\$__timeGroupAlias\(([^,]*),([^)]*)\)", lambda m: group(m, True), out)
    out = re.sub(r"\$__timeGroup\(([^,]*),([^)]*)\)", lambda m: group(m, False), out)
    out = out.replace("$__timeFrom()", f"'{_stamp(when.start)}'")
    out = out.replace("$__timeTo()", f"'{_stamp(when.end)}'")
    out = out.replace("${__interval}", interval).replace("$__interval", interval)
    # Longest names first, so $device is not taken for the start of $devices.
    for name in sorted(variables, key=len, reverse=True):
        listed = sql_list(variables[name])
        out = out.replace("${" + name + "}", listed).replace("$" + name, listed)
    leftover = re.search(r"\$\{?[A-Za-z_]\w*", out)
    if leftover:
        raise ValueError(f"unexpanded {leftover[0]!r} in {sql[:80]!r}")
    return out


def reads_readings(sql: str) -> bool:
    """Whether a panel reads the readings table (its views included), not events."""
    return re.search(r"telemetry\.readings", sql) is not None


# -- the registry: filling it, resolving through it -------------------------------------------


def grow_registry(conninfo: str, have: int, want: int) -> float:
    """Controllers have..want-1 with seed-demo's layout, set-based; seconds it took."""
    started = time.perf_counter()
    lo, hi = mac_of(have), mac_of(want - 1)
    slots = [(s.connector, CONNECTOR_MODES[s.connector], s.component, s.type_key, s.template_key)
             for s in LAYOUT]  # fmt: skip
    connectors = sorted({(c, m) for c, m, *_ in slots})
    with psycopg.connect(conninfo) as conn:
        conn.execute(
            """INSERT INTO registry.devices (device_type_id, name, mac)
               SELECT (SELECT id FROM registry.device_types WHERE is_controller),
                      'Controller ' || i, lpad(to_hex(%s::bigint + i), 12, '0')
               FROM generate_series(%s::bigint, %s::bigint) AS i""",
            (BASE_MAC, have, want - 1),
        )
        conn.execute(
            """INSERT INTO registry.connectors (controller_id, name, mode)
               SELECT d.id, c.name, c.mode FROM registry.devices AS d,
                      unnest(%s::text[], %s::text[]) AS c(name, mode)
               WHERE d.mac BETWEEN %s AND %s""",
            ([c for c, _ in connectors], [m for _, m in connectors], lo, hi),
        )
        conn.execute(
            """CREATE TEMPORARY TABLE new_pins ON COMMIT DROP AS
               SELECT nextval(pg_get_serial_sequence('registry.devices', 'id')) AS device_id,
                      k.id AS connector_id, s.component, t.id AS type_id, tpl.id AS template_id,
                      s.component || ' ' || k.name || ' of ' || d.name AS name
               FROM registry.devices AS d
               JOIN registry.connectors AS k ON k.controller_id = d.id
               JOIN unnest(%s::text[], %s::text[], %s::text[], %s::text[])
                    AS s(connector, component, type_key, template_key) ON s.connector = k.name
               JOIN registry.device_types AS t ON t.key = s.type_key
               JOIN registry.device_templates AS tpl ON tpl.key = s.template_key
               WHERE d.mac BETWEEN %s AND %s""",
            ([s[0] for s in slots], [s[2] for s in slots], [s[3] for s in slots],
             [s[4] for s in slots], lo, hi),
        )  # fmt: skip
        conn.execute(
            """INSERT INTO registry.devices (id, device_type_id, template_id, name)
               SELECT device_id, type_id, template_id, name FROM new_pins"""
        )
        conn.execute(
            """INSERT INTO registry.pins (connector_id, component, device_id)
               SELECT connector_id, component, device_id FROM new_pins"""
        )
        conn.commit()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE registry.devices, registry.connectors, registry.pins")
    return time.perf_counter() - started


class Pass(NamedTuple):
    shares: LayerShares
    batch_ms: list[float]  # resolve() per batch
    per_message_us: list[float]
    clears: int  # times the in-process cache was full and started over


async def resolve_all(resolver: Resolver, batches: Sequence[Sequence[str]]) -> Pass:
    """Each batch as the processor resolves it: its distinct topics, parsed, at once."""
    stats: list[dict[str, int]] = []
    batch_ms: list[float] = []
    per_message: list[float] = []
    clears, size = 0, 0
    for batch in batches:
        topics = {t: parse_topic(t) for t in batch}  # parsed before the lookup, as decoder.py
        started = time.perf_counter()
        found = await resolver.resolve(topics)
        elapsed = time.perf_counter() - started
        batch_ms.append(elapsed * 1000)
        per_message.append(elapsed * 1e6 / len(batch))
        stats.append(found.stats)
        cached = len(resolver._locations)
        clears += cached < size
        size = cached
    return Pass(layer_shares(stats), batch_ms, per_message, clears)


@dataclass
class Layers:
    """A processor's lookup path: its registry connection, Redis client and resolver."""

    registry: Registry
    cache: RedisCache
    resolver: Resolver

    @classmethod
    def start(cls, conninfo: str, redis_url: str, metrics: ProcessorMetrics) -> Layers:
        config = ProcessorSettings()
        registry = Registry(conninfo, metrics=metrics)
        cache = RedisCache(
            redis_url,
            config.processor_redis_prefix,
            config.processor_cache_ttl_seconds,
            config.processor_redis_retry_seconds,
            config.processor_redis_timeout_seconds,
            metrics=metrics,
        )
        resolver = Resolver(registry, cache, config.processor_local_cache_size, metrics=metrics)
        return cls(registry, cache, resolver)

    async def close(self) -> None:
        await self.cache.close()
        await self.registry.close()


async def retained_bytes(
    conninfo: str, redis_url: str, metrics: ProcessorMetrics, batches: Sequence[Sequence[str]]
) -> tuple[int, int]:
    """Bytes a new Resolver retains after resolving `batches` (traced by tracemalloc), and
    its entries. Only what outlives the loop is counted: the cache, not the Lookups."""
    layers = Layers.start(conninfo, redis_url, metrics)
    try:
        await layers.resolver.resolve({})  # first-call allocations outside the trace
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for batch in batches:
            await layers.resolver.resolve({t: parse_topic(t) for t in batch})
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        await layers.close()
    return retained, len(layers.resolver._locations)


def redis_used_memory(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        info: dict[str, Any] = client.info("memory")  # type: ignore[assignment]
        return int(info["used_memory"])
    finally:
        client.close()


def flush_redis(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


# -- the registry: measuring ------------------------------------------------------------------


@dataclass
class Servers:
    conninfo: str  # the `growth` database
    empty: str  # the `empty` database
    redis_url: str
    timescaledb: bool


def measure_registry(report: Report, servers: Servers, sizes: Sequence[int], repeats: int) -> None:
    have = 0
    for size in sizes:
        seconds = grow_registry(servers.conninfo, have, size)
        have = size
        print(f"registry: {size:,} controllers ({12 * size:,} devices on pins) in {seconds:.1f} s")
        report.add(Measurement(f"[{size:,}] registry fill (set-based INSERT)", "s", [seconds],
                               f"{size:,} controllers, {4 * size:,} connectors, "
                               f"{12 * size:,} pins; row triggers on"))  # fmt: skip
        asyncio.run(_resolver_phases(report, servers, size))
        _variable_queries(report, servers.conninfo, size, repeats)


async def _resolver_phases(report: Report, servers: Servers, size: int) -> None:
    topics, rates = fleet_topics(mac_of(i) for i in range(size))
    rng = random.Random(size)
    cold_batches = every_topic_once(topics, rng)
    window = traffic(topics, rates, window_batches(rates, WINDOW_S), rng)
    metrics = ProcessorMetrics()
    flush_redis(servers.redis_url)
    redis_before = redis_used_memory(servers.redis_url)
    first = Layers.start(servers.conninfo, servers.redis_url, metrics)
    try:
        cold = await resolve_all(first.resolver, cold_batches)
        steady = await resolve_all(first.resolver, window)
    finally:
        await first.close()
    redis_after = redis_used_memory(servers.redis_url)
    second = Layers.start(servers.conninfo, servers.redis_url, metrics)
    try:
        restart = await resolve_all(second.resolver, window)
    finally:
        await second.close()
    # Up to the in-process cache's bound (PROCESSOR_LOCAL_CACHE_SIZE), not past it: a full
    # cache starts over, and its largest size is what the processor must have room for.
    bound = ProcessorSettings().processor_local_cache_size // BATCH
    memory, entries = await retained_bytes(
        servers.conninfo, servers.redis_url, metrics, cold_batches[:bound]
    )
    _report_resolver(report, size, len(topics), sum(rates),
                     {"cold": cold, "steady": steady, "restart": restart})  # fmt: skip
    tag = f"[{size:,}]"
    report.add(Measurement(f"{tag} processor: registry cache retained", "MB", [memory / 1e6],
                           f"tracemalloc, a new Resolver filled from Redis: {entries:,} "
                           f"entries, {memory / max(entries, 1):,.0f} B each"))  # fmt: skip
    redis_bytes = redis_after - redis_before
    report.add(Measurement(f"{tag} Redis used_memory (registry keys)", "MB", [redis_bytes / 1e6],
                           f"after the warm-up, over an empty Redis; "
                           f"{redis_bytes / size:,.0f} B per controller"))  # fmt: skip


def _report_resolver(
    report: Report, size: int, n_topics: int, msg_rate: float, passes: Mapping[str, Pass]
) -> None:
    tag = f"[{size:,}]"
    notes = {
        "cold": f"every one of {n_topics:,} topics once; memory and Redis empty",
        "steady": f"{WINDOW_S:.0f} s of the fleet's traffic ({msg_rate:,.0f} msg/s) after it",
        "restart": "the same traffic, a new Resolver: memory empty, Redis warm",
    }
    for phase, result in passes.items():
        shares, note = result.shares, notes[phase]
        batches = len(result.batch_ms)
        report.add(Measurement(f"{tag} {phase}: memory hit ratio", "ratio",
                               [shares.memory_hit_ratio],
                               f"{note}; {batches:,} batches of {BATCH}"))  # fmt: skip
        report.add(Measurement(f"{tag} {phase}: answered by Redis", "ratio",
                               [shares.redis_share], f"of {shares.lookups:,} distinct "
                               "topic lookups (per batch)"))  # fmt: skip
        report.add(Measurement(f"{tag} {phase}: answered by PostgreSQL", "ratio",
                               [shares.postgres_share], ""))  # fmt: skip
        report.add(Measurement(f"{tag} {phase}: resolve() per batch p50", "ms",
                               [percentile(result.batch_ms, 50)], f"{BATCH} messages"))  # fmt: skip
        report.add(Measurement(f"{tag} {phase}: resolve() per batch p99", "ms",
                               [percentile(result.batch_ms, 99)], ""))  # fmt: skip
        report.add(Measurement(f"{tag} {phase}: lookup per message, median", "us",
                               [statistics.median(result.per_message_us)],
                               "resolve() per batch / messages in it"))  # fmt: skip
        report.add(Measurement(f"{tag} {phase}: total", "s", [sum(result.batch_ms) / 1000],
                               f"{batches:,} batches"))  # fmt: skip
        report.add(Measurement(f"{tag} {phase}: in-process cache cleared (full)", "times",
                               [float(result.clears)], "PROCESSOR_LOCAL_CACHE_SIZE "
                               "reached: the cache starts over"))  # fmt: skip


# The $device variable through the base tables instead of registry.device_locations, whose
# controller_mac (a coalesce over two joins) no index can serve: what the bench compares.
DEVICE_VARIABLE_BASE_TABLES = """SELECT
  d.name || ' (' || ctl.name || ' ' || c.name || ')' AS __text, d.id AS __value
FROM registry.devices AS ctl
JOIN registry.connectors AS c ON c.controller_id = ctl.id
JOIN registry.pins AS p ON p.connector_id = c.id
JOIN registry.devices AS d ON d.id = p.device_id
WHERE ctl.mac IN ($controller)
  AND EXISTS (SELECT 1 FROM registry.datapoints AS dp WHERE dp.template_id = d.template_id)
ORDER BY 1"""


def _variable_queries(report: Report, conninfo: str, size: int, repeats: int) -> None:
    """The readings dashboard's variable queries list the registry: their cost grows with it."""
    dashboard = json.loads((DASHBOARDS / "f2pipe-readings.json").read_text())
    queries = variable_queries(dashboard)
    one = {"controller": [mac_of(0)]}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        devices = [r[1] for r in conn.execute(expand(queries["device"], _last(6), one))]
        variables = {**one, "device": [str(d) for d in devices]}
        timed = {f"${name}": (sql, variables) for name, sql in queries.items()}
        timed["$device, base tables (proposed)"] = (DEVICE_VARIABLE_BASE_TABLES, variables)
        # "All" is what the dashboard opens with (includeAll, nothing saved as current).
        every = [r[1] for r in conn.execute(expand(queries["controller"], _last(6), {}))]
        timed["$device, All controllers"] = (queries["device"], {"controller": every})
        for name, (sql, values) in timed.items():
            runs, rows = _time_query(conn, expand(sql, _last(6), values), repeats)
            scope = "all controllers" if "controller" in name or "All" in name else "one's"
            report.add(Measurement(f"[{size:,}] Grafana variable {name}", "ms", runs,
                                   f"{rows:,} rows ({scope})"))  # fmt: skip


def _time_query(conn: Connection, sql: str, repeats: int) -> tuple[list[float], int]:
    rows = len(conn.execute(sql).fetchall())  # warm-up: plan, caches
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        conn.execute(sql).fetchall()
        runs.append((time.perf_counter() - started) * 1000)
    return runs, rows


def _last(hours: int) -> TimeRange:
    return TimeRange(END - timedelta(hours=hours), END)


# -- the readings table -----------------------------------------------------------------------


def pause_jobs(conninfo: str) -> int:
    """Pause TimescaleDB's policy jobs (compression, retention, refresh): a job that wakes
    during one run only would be measured as the table's cost. Returns how many."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs"
            " WHERE hypertable_schema = 'telemetry'"
        ).fetchall()
    return len(rows)


def reading_series(conninfo: str, controllers: int) -> list[tuple[int, int]]:
    """(device id, datapoint id) of every frame datapoint of the first controllers' sensors."""
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            """SELECT l.device_id, dp.id FROM registry.device_locations AS l
               JOIN registry.datapoints AS dp ON dp.template_id = l.template_id
               WHERE l.controller_mac BETWEEN %s AND %s AND dp."offset" IS NOT NULL
               ORDER BY l.device_id, dp.id""",
            (mac_of(0), mac_of(controllers - 1)),
        ).fetchall()
    return [(int(d), int(p)) for d, p in rows]


def fill_plan(rows: int, series: int, period_us: int, end_us: int) -> tuple[int, int]:
    """(ticks, first tick's time): `rows` readings of `series` series every `period_us`,
    the last tick one period before `end_us`."""
    if series <= 0:
        raise ValueError("no series to fill the readings table with (an empty registry?)")
    ticks = -(-rows // series)
    return ticks, end_us - ticks * period_us


def fill_readings(conninfo: str, series: Sequence[tuple[int, int]], rows: int) -> float:
    """`rows` readings (whole ticks of every series) back from END, in the database, a
    transaction per ~6 hours of data; seconds it took."""
    ticks, start_us = fill_plan(rows, len(series), READING_PERIOD_US, END_US)
    started = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TEMPORARY TABLE series (device_id bigint, datapoint_id integer)")
        with conn.cursor() as cur, cur.copy("COPY series FROM STDIN") as cp:
            for row in series:
                cp.write_row(row)
        for first in range(0, ticks, FILL_TICKS):
            last = min(first + FILL_TICKS, ticks) - 1
            # Six hours at a time, oldest first, as a live table grew; values vary.
            conn.execute(
                """INSERT INTO telemetry.readings
                   SELECT 'epoch'::timestamptz + (%s::bigint + t * %s::bigint)
                              * interval '1 microsecond',
                          s.device_id, s.datapoint_id,
                          20 + ((t * 7 + s.device_id * 13 + s.datapoint_id) %% 977) / 10.0
                   FROM generate_series(%s::bigint, %s::bigint) AS t, series AS s""",
                (start_us, READING_PERIOD_US, first, last),
            )
            done = min(last + 1, ticks) * len(series)
            print(f"  readings: {done:,} rows, {time.perf_counter() - started:.0f} s", flush=True)
    return time.perf_counter() - started


def settle(conninfo: str, timescaledb: bool) -> dict[str, float]:
    """What the table's owner would have by now: statistics, the visibility map, and (with
    TimescaleDB) the hourly aggregate refreshed up to an hour before END, as its policy does."""
    took: dict[str, float] = {}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE telemetry.readings")
        took["vacuum analyze"] = time.perf_counter() - started
        if timescaledb:
            started = time.perf_counter()
            conn.execute(
                "CALL refresh_continuous_aggregate('telemetry.readings_hourly', NULL, %s)",
                (END - timedelta(hours=1),),
            )
            took["hourly aggregate refresh"] = time.perf_counter() - started
    return took


def written_chunk(conninfo: str, at: datetime) -> tuple[datetime, datetime] | None:
    """(start, end) of the readings chunk that holds `at`, if there is one (TimescaleDB)."""
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            """SELECT range_start, range_end FROM timescaledb_information.chunks
               WHERE hypertable_schema = 'telemetry' AND hypertable_name = 'readings'
                 AND range_start <= %s AND range_end > %s""",
            (at, at),
        ).fetchone()
    return (row[0], row[1]) if row else None


def table_shape(conninfo: str, timescaledb: bool) -> dict[str, float]:
    """Rows, bytes, chunks, and the rows in the chunk the sink's writes after END land in
    (0 when END starts a new chunk)."""
    held = written_chunk(conninfo, END) if timescaledb else None
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "SELECT count(*), pg_total_relation_size('telemetry.readings') FROM telemetry.readings"
            if not timescaledb
            else "SELECT (SELECT count(*) FROM telemetry.readings),"
            " hypertable_size('telemetry.readings')"
        ).fetchone()
        count, size = row if row else (0, 0)
        chunks = 0
        newest = 0
        if timescaledb:
            row = conn.execute("SELECT count(*) FROM show_chunks('telemetry.readings')").fetchone()
            chunks = row[0] if row else 0
        if held is not None:
            row = conn.execute(
                'SELECT count(*) FROM telemetry.readings WHERE "timestamp" >= %s', (held[0],)
            ).fetchone()
            newest = row[0] if row else 0
    return {"rows": float(count), "bytes": float(size), "chunks": float(chunks),
            "rows in the written chunk": float(newest)}  # fmt: skip


def series_workload(series: Sequence[tuple[int, int]], n_rows: int, start_us: int) -> list[Batch]:
    """`n_rows` readings of `series` every READING_PERIOD_US from `start_us`, in records of
    RECORD_ROWS and batches of BATCH_ROWS, encoded as the sink holds them."""
    readings = [
        Reading(start_us + (k // len(series)) * READING_PERIOD_US, *series[k % len(series)],
                20.0 + k % 977 / 10)
        for k in range(n_rows)
    ]  # fmt: skip
    chunks = [readings[i : i + RECORD_ROWS] for i in range(0, n_rows, RECORD_ROWS)]
    records = [
        take("processed", 0, offset, encode_processed_batch(ProcessedBatch(0, offset, rs, [])))[0]
        for offset, rs in enumerate(chunks)
    ]
    per_batch = BATCH_ROWS // RECORD_ROWS
    return [
        Batch(records[i : i + per_batch], [r for rs in chunks[i : i + per_batch] for r in rs])
        for i in range(0, len(records), per_batch)
    ]


def _rate(method: Any, batches: list[Batch]) -> float:
    # A writer_method ignores its connection argument: it holds the Writer's own.
    started = time.perf_counter()
    method(None, batches)
    return sum(len(b.readings) for b in batches) / (time.perf_counter() - started)


def _empty_again(conninfo: str, since_us: int) -> None:
    """Delete what a run wrote into `empty`, keeping its chunk: every run meets an empty one."""
    since = datetime.fromtimestamp(since_us / 1e6, UTC)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute('DELETE FROM telemetry.readings WHERE "timestamp" >= %s', (since,))
        conn.execute("VACUUM telemetry.readings")


def sink_windows(
    first_us: int, runs: int, rows: int, series: int, period_us: int = READING_PERIOD_US
) -> list[int]:
    """Start of each run's readings: one tick apart from the run before, so no run meets
    another's keys."""
    span = (-(-rows // series) + 1) * period_us
    return [first_us + run * span for run in range(runs)]


def alternating_rates(
    methods: Mapping[K, Method], series: Sequence[tuple[int, int]], starts: Sequence[int],
    emptied: Iterable[str],
) -> dict[K, list[float]]:  # fmt: skip
    """Each writer's rows/s over the same batches, a run from each of starts[1:] (starts[0]
    warms every database up: connections, plans, the chunk), the order reversed every other
    run so a drift of the machine hits all alike. The `emptied` databases lose each run's
    rows (those from END on), so every run meets what they held before it."""
    rates: dict[K, list[float]] = {name: [] for name in methods}
    names, emptied = list(methods), list(emptied)
    for run, start in enumerate(starts):
        batches = series_workload(series, SINK_ROWS, start)
        for name in names if run % 2 else names[::-1]:
            rate = _rate(methods[name], batches)
            if run:
                rates[name].append(rate)
        for conninfo in emptied:
            _empty_again(conninfo, END_US)
    return rates


def measure_sink(
    report: Report, servers: Servers, series: Sequence[tuple[int, int]], repeats: int, rows: int,
    *, first_us: int, label: str, stay_in: tuple[datetime, datetime] | None,
) -> int:  # fmt: skip
    """The writer into `empty` and into `growth`, run by run; returns where the next
    measurement may start writing. `stay_in`: the chunk the runs must not leave (END's, when
    it holds some of the fill: its fill is what is measured); None when END begins a chunk
    (30-minute chunks do): the runs may then cross into the next ones, meeting chunks of every
    age from new, as a live table's writes do."""
    starts = sink_windows(first_us, repeats + 1, SINK_ROWS, len(series))
    # Writes stay in END's chunk: a new chunk would be empty in both databases.
    last_us = starts[-1] + SINK_ROWS // len(series) * READING_PERIOD_US
    if stay_in is not None and last_us >= stay_in[1].timestamp() * 1_000_000:
        raise RuntimeError("the sink runs would leave END's chunk: fewer repeats or SINK_ROWS")
    methods = {"empty": writer_method(servers.empty), "full": writer_method(servers.conninfo)}
    results = alternating_rates(methods, series, starts, [servers.empty])
    shape = (f"{SINK_ROWS // BATCH_ROWS} x {BATCH_ROWS:,}-row batches of {len(series):,} series"
             " every 30 s; Writer.write, direct COPY path")  # fmt: skip
    report.add(Measurement(f"sink writer: empty table{label}", "rows/s", results["empty"], shape))
    report.add(Measurement(f"sink writer: {rows / 1e6:g} M-row table{label}", "rows/s",
                           results["full"], "the same batches, after END" + (
                               "" if stay_in else ", into chunks from new")))  # fmt: skip
    ratios = [f / e for f, e in zip(results["full"], results["empty"], strict=True)]
    report.add(Measurement(f"sink writer: {rows / 1e6:g} M rows / empty{label}", "ratio", ratios,
                           "paired run by run; target >= 0.8"))  # fmt: skip
    return starts[-1] + (SINK_ROWS // len(series) + 1) * READING_PERIOD_US


CHUNK_FILLS_MIN = (10, 30, 60, 120, 240)  # the fleet's minutes already in the written chunk


def measure_written_chunk(
    report: Report, pg: PostgresServer, series: Sequence[tuple[int, int]], repeats: int
) -> None:
    """The sink's rate by what the chunk it writes into already holds: one database per
    CHUNK_FILLS_MIN, its chunk holding the fleet's last minutes before END (1 day chunks:
    all in END's), and an empty one, written in turn run by run; each run's rows are deleted
    again, so every run meets exactly the fill."""
    fills = {m: m * 60_000_000 // READING_PERIOD_US * len(series) for m in (0, *CHUNK_FILLS_MIN)}
    databases: dict[int, str] = {}
    for minutes, rows in fills.items():
        conninfo = pg.create_database(f"chunk{minutes}")
        apply_migrations(conninfo)  # 1 day chunks: END's holds the whole fill
        pause_jobs(conninfo)
        if rows:
            fill_readings(conninfo, series, rows)
            settle(conninfo, timescaledb=True)
        databases[minutes] = conninfo
    methods = {m: writer_method(c) for m, c in databases.items()}
    starts = sink_windows(END_US, repeats + 1, SINK_ROWS, len(series))
    results = alternating_rates(methods, series, starts, databases.values())
    for minutes in CHUNK_FILLS_MIN:
        name = f"sink writer: chunk holding {minutes} min ({fills[minutes] / 1e6:g} M rows)"
        report.add(Measurement(name, "rows/s", results[minutes], "1 day chunks, 128MB"))
        ratios = [r / e for r, e in zip(results[minutes], results[0], strict=True)]
        report.add(Measurement(name + " / empty chunk", "ratio", ratios, "paired run by run"))
    report.add(Measurement("sink writer: empty chunk (the reference)", "rows/s", results[0],
                           "the same batches; rows deleted after every run"))  # fmt: skip
    for minutes in databases:
        pg.drop_database(f"chunk{minutes}")


# -- Grafana panels ---------------------------------------------------------------------------


def measure_panels(
    report: Report, conninfo: str, repeats: int, out_dir: Path | None
) -> list[tuple[float, str]]:
    """Median ms of every readings panel, one controller's devices, last 6 h and 24 h; the
    EXPLAIN ANALYZE of the slow ones and of every 24 h one, with their medians."""
    dashboard = json.loads((DASHBOARDS / "f2pipe-readings.json").read_text())
    queries = variable_queries(dashboard)
    plans: list[tuple[float, str]] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        variables: dict[str, Sequence[object]] = {"controller": [mac_of(0)]}
        for name in ("device", "datapoint"):  # each as the dashboard fills it, "All" chosen
            options = conn.execute(expand(queries[name], _last(6), variables)).fetchall()
            variables = {**variables, name: [value for _, value in options]}
        for path in sorted(DASHBOARDS.glob("*.json")):
            for q in panel_queries(json.loads(path.read_text())):
                if not reads_readings(q.sql):
                    continue
                for hours in RANGES_H:
                    sql = expand(q.sql, _last(hours), variables)
                    runs, rows = _time_query(conn, sql, repeats)
                    name = f"panel {q.panel!r} {q.ref}, last {hours} h"
                    report.add(Measurement(name, "ms", runs, f"{rows:,} rows; one controller, "
                                           f"{len(variables['device'])} devices"))  # fmt: skip
                    median = statistics.median(runs)
                    if median >= SLOW_MS or hours == RANGES_H[-1]:
                        plans.append((median, _explain(conn, name, sql)))
                    # JIT compiles for ~0.1 s when the planner overestimates a chunk scan.
                    conn.execute("SET jit = off")
                    runs, _ = _time_query(conn, sql, repeats)
                    conn.execute("RESET jit")
                    report.add(Measurement(name + ", jit off", "ms", runs, "SET jit = off"))
    if out_dir is not None and plans:
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        text = "\n\n".join(plan for _, plan in plans)
        (out_dir / f"{stamp}-growth-explain.txt").write_text(text + "\n")
    return plans


def _explain(conn: Connection, name: str, sql: str) -> str:
    rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql).fetchall()
    return f"-- {name}\n{sql}\n" + "\n".join(str(r[0]) for r in rows)


# -- the suite --------------------------------------------------------------------------------


class TunablePostgres(PostgresServer):
    """The harness's PostgreSQL with shared_buffers of our choosing: its command line sets
    128MB, and a command-line setting wins over ALTER SYSTEM."""

    shared_buffers = HARNESS_SHARED_BUFFERS

    def command(self) -> list[str]:
        given = f"shared_buffers={HARNESS_SHARED_BUFFERS}"
        return [f"shared_buffers={self.shared_buffers}" if a == given else a
                for a in super().command()]  # fmt: skip


def tuned_shared_buffers() -> str:
    """A quarter of the machine's memory, as timescaledb-tune sets it in the
    timescale/timescaledb image that docker-compose.yml deploys."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{total // 4 // 2**20}MB"


def run(
    report: Report, repeats: int, min_seconds: float, quick: bool = False,
    out_dir: Path | None = None, *, chunk_interval: str | None = None,
) -> None:  # fmt: skip
    """With `chunk_interval` (TELEMETRY_CHUNK_INTERVAL's form, e.g. "6 hours"): the readings
    table's chunks that long, and only the readings part (the registry does not depend on
    it: it holds just the READING_CONTROLLERS whose sensors fill the table)."""
    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    rows = 5_000_000 if quick else 50_000_000
    tsdb = timescaledb_installed(postgres_bin_dir())
    with tempfile.TemporaryDirectory(prefix="f2pipe-bench-growth-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # PostgreSQL runs as `postgres` when we are root
        with (
            TunablePostgres(root / "postgres", durable=False, timescaledb=tsdb) as pg,
            RedisServer(root / "redis") as cache,
        ):
            servers = Servers(pg.create_database("growth"), pg.create_database("empty"),
                              cache.url, tsdb)  # fmt: skip
            for conninfo in (servers.conninfo, servers.empty):
                policy = {"chunk_interval": chunk_interval} if chunk_interval else None
                apply_migrations(conninfo, settings=policy)
                seed_demo(conninfo, 0)  # device types, templates, datapoints
                if tsdb:
                    print(f"paused {pause_jobs(conninfo)} TimescaleDB policy jobs")
            if chunk_interval is None:
                measure_registry(report, servers, sizes, repeats)
            else:  # the controllers whose sensors fill the readings table, and no more
                grow_registry(servers.conninfo, 0, READING_CONTROLLERS)
            _readings(report, servers, pg, rows, repeats=repeats, out_dir=out_dir)


def _readings(
    report: Report, servers: Servers, pg: TunablePostgres, rows: int, *, repeats: int,
    out_dir: Path | None,
) -> None:  # fmt: skip
    series = reading_series(servers.conninfo, READING_CONTROLLERS)
    seconds = fill_readings(servers.conninfo, series, rows)
    ticks, _ = fill_plan(rows, len(series), READING_PERIOD_US, END_US)
    hours = ticks * READING_PERIOD_US / 3.6e9
    report.add(Measurement("readings fill (INSERT ... SELECT generate_series)", "s", [seconds],
                           f"{ticks * len(series):,} rows: {len(series):,} series every 30 s, "
                           f"{hours:.1f} h up to {END:%Y-%m-%d %H:%M} UTC"))  # fmt: skip
    for what, took in settle(servers.conninfo, servers.timescaledb).items():
        report.add(Measurement(f"readings {what} after the fill", "s", [took], ""))
    shape = table_shape(servers.conninfo, servers.timescaledb)
    print("readings table: " + ", ".join(f"{k} {v:,.0f}" for k, v in shape.items()))
    written = shape["rows in the written chunk"]
    # The chunk the sink's runs stay in; None: END begins a chunk, the runs meet new chunks.
    stay_in = written_chunk(servers.conninfo, END) if servers.timescaledb else None
    report.add(Measurement("readings table: rows", "rows", [shape["rows"]],
                           f"{shape['chunks']:.0f} chunks; {written:,.0f} rows in the chunk "
                           "the sink writes to"))  # fmt: skip
    report.add(Measurement("readings table: size", "GB", [shape["bytes"] / 1e9],
                           "heap + indexes (hypertable_size)"))  # fmt: skip
    for median, plan in measure_panels(report, servers.conninfo, repeats, out_dir):
        if median >= SLOW_MS:
            print(plan, end="\n\n")
    if servers.timescaledb:  # what the cost depends on: the written chunk's rows
        measure_written_chunk(report, pg, series, repeats)
    sink = partial(measure_sink, report, servers, series, repeats, rows, stay_in=stay_in)
    label = f" [shared_buffers {pg.shared_buffers}]"
    after = sink(first_us=END_US, label=label)
    # Again with production's memory for PostgreSQL: is a difference the table's size or
    # the harness's small buffer cache?
    pg.stop()
    pg.shared_buffers = tuned_shared_buffers()
    pg.start()
    label = f" [shared_buffers {pg.shared_buffers}]"
    after = sink(first_us=after, label=label)
    # Diagnosis: the same without the dashboards' index (device_id, timestamp DESC), whose
    # inserts land all over a big chunk's index while the primary key's append at its end.
    for conninfo in (servers.conninfo, servers.empty):
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("DROP INDEX telemetry.readings_device_time")
    label += " [without readings_device_time]"
    sink(first_us=after, label=label)
