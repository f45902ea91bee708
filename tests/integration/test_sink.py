"""`f2pipe sink` as a real process between a Kafka-protocol broker and PostgreSQL.

Each test has its own topics, consumer group and database. Counting is done by reading the
table and the topics, never from the broker's high watermark (Tansu reports it wrong).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from f2pipe.migrate import apply_migrations
from f2pipe_devtools.env import kafka_env, postgres_env, service_env
from f2pipe_devtools.servers import PostgresServer, free_port
from f2pipe_shared.deadletters import PREVIEW_BYTES, DeadLetter, Reason, Stage
from f2pipe_shared.records import Event, ProcessedBatch, Reading, encode_processed_batch
from f2pipe_shared.settings import KafkaSettings
from f2pipe_sink.dlq import DeadLetterProducer

pytestmark = pytest.mark.integration

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Short group timeouts: a join on Tansu waits about max.poll.interval.ms / 2.5 (measured:
# 2 s at 5,000 ms), and a killed member is evicted after session.timeout.ms.
FAST_GROUP = {"KAFKA_MAX_POLL_INTERVAL_MS": "5000", "KAFKA_SESSION_TIMEOUT_MS": "3000"}

Key = tuple[datetime, int, int, float]
BACKLOG = 300_000  # readings the restarted sink works through when it is killed again


@dataclass
class Stack:
    """One test's topics, group, database, and the sink processes it started."""

    bootstrap: str
    conninfo: str
    tmp: Path
    partitions: int = 3
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    @property
    def topic(self) -> str:
        return f"processed-{self.suffix}"

    @property
    def dlq(self) -> str:
        return f"dlq-{self.suffix}"

    @property
    def group(self) -> str:
        return f"sink-{self.suffix}"

    def env(self, **overrides: str) -> dict[str, str]:
        env = service_env(
            postgres_env(self.conninfo),
            kafka_env(
                self.bootstrap,
                processed=self.topic,
                dead_letters=self.dlq,
                partitions=self.partitions,
            ),
            SINK_GROUP_ID=self.group,
            METRICS_HOST="127.0.0.1",
            METRICS_PORT=str(self.port),
            LOG_FORMAT="text",
            BATCH_SIZE="2000",
            FLUSH_INTERVAL="0.05",
            **FAST_GROUP,
        )
        env.update(overrides)
        return env

    def start(
        self, port: int | None = None, *, ready: bool = True, **overrides: str
    ) -> subprocess.Popen[bytes]:
        """A sink on the stack's metrics port, or on ``port`` (a second sink beside it); with
        ``ready``, once it is (partitions assigned, database up)."""
        log = (self.tmp / f"sink-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "f2pipe", "sink"],
            env=self.env(METRICS_PORT=str(port or self.port), **overrides),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        if ready:
            wait_until(lambda: self.health(port)[0] == 200, 30, "the sink to be ready", proc)
        return proc

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + p.read_text(errors="replace")[-6000:]
            for p in sorted(self.tmp.glob("sink-*.log"))
        )

    def health(self, port: int | None = None) -> tuple[int | None, dict[str, Any]]:
        url = f"http://127.0.0.1:{port or self.port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:
            return None, {}

    def metrics(self, port: int | None = None) -> dict[str, float]:
        url = f"http://127.0.0.1:{port or self.port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode()
        values = {}
        for line in text.splitlines():
            if line.startswith("f2pipe_sink"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def produce(self, records: list[tuple[int, bytes]], **config: Any) -> None:
        producer = Producer(
            {"bootstrap.servers": self.bootstrap, "enable.idempotence": True, **config}
        )
        for partition, value in records:
            producer.produce(self.topic, value, partition=partition)
        assert producer.flush(30) == 0

    def create_topics(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=self.partitions) for t in (self.topic, self.dlq)]
        )
        for future in futures.values():
            future.result(30)

    def committed(self) -> dict[int, int]:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group})
        try:
            parts = [TopicPartition(self.topic, p) for p in range(self.partitions)]
            return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=15)}
        finally:
            consumer.close()

    def dead_letters(self, expected: int, timeout: float = 20) -> list[tuple[int, DeadLetter]]:
        """Read the dead-letter topic from the start (assigned, no group join) until `expected`."""
        consumer = Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": f"reader-{self.suffix}"}
        )
        consumer.assign([TopicPartition(self.dlq, p, 0) for p in range(self.partitions)])
        found: list[tuple[int, DeadLetter]] = []
        deadline = time.monotonic() + timeout
        try:
            while len(found) < expected and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is None or message.error():
                    continue
                raw = message.headers() or []
                pairs = list(raw.items()) if isinstance(raw, dict) else raw
                headers = [(k, v if isinstance(v, bytes) else None) for k, v in pairs]
                letter = DeadLetter.from_kafka(message.value(), headers)
                found.append((message.partition() or 0, letter))
            # A little longer: nothing beyond what we expect may arrive.
            extra = consumer.poll(1.0)
            assert extra is None or extra.error(), "more dead letters than expected"
        finally:
            consumer.close()
        return found


@pytest.fixture
def stack(kafka_bootstrap: str, pg_conninfo: str, tmp_path: Path) -> Iterator[Stack]:
    apply_migrations(pg_conninfo)
    s = Stack(kafka_bootstrap, pg_conninfo, tmp_path)
    s.create_topics()
    yield s
    for proc in s.procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sink exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


_timestamps = itertools.count(1_795_000_000_000_000, 1_000)


def make_readings(n: int) -> list[Reading]:
    """Readings with keys unique across the whole test session."""
    return [Reading(next(_timestamps), 1000 + i % 50, 1 + i % 3, i * 0.25) for i in range(n)]


def batch(readings: list[Reading], events: list[Event] | None = None) -> bytes:
    return encode_processed_batch(ProcessedBatch(0, 0, readings, events or []))


def key(r: Reading) -> Key:
    return (EPOCH + timedelta(microseconds=r.timestamp_us), r.device_id, r.datapoint_id, r.value)


def stored(conninfo: str) -> list[Key]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT timestamp, device_id, datapoint_id, value FROM telemetry.readings"
        ).fetchall()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def count(conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT count(*) FROM telemetry.readings").fetchone()
    assert row is not None
    return int(row[0])


def assert_exactly(conninfo: str, readings: list[Reading]) -> None:
    rows = stored(conninfo)
    assert len(rows) == len(set(rows))
    expected = {key(r) for r in readings}
    missing = expected - set(rows)
    unexpected = set(rows) - expected
    assert not missing, f"{len(missing)} readings missing"
    assert not unexpected, f"{len(unexpected)} unexpected rows"


def produced_per_partition(records: list[tuple[int, bytes]]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for partition, _ in records:
        counts[partition] = counts.get(partition, 0) + 1
    return counts


# -- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [("BATCH_SIZE", "0"), ("FLUSH_INTERVAL", "soon"), ("SINK_GROUP_ID", "no spaces")],
)
def test_bad_settings_exit_2_naming_the_variable(stack: Stack, variable: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "f2pipe", "sink"],
        env=stack.env(**{variable: value}),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert variable in result.stderr


def test_sigterm_writes_what_it_holds_commits_and_exits_0(stack: Stack) -> None:
    # Neither limit is reached: only the shutdown can write these rows.
    proc = stack.start(BATCH_SIZE="1000000", FLUSH_INTERVAL="3600")
    readings = make_readings(700)
    records = [(i % 3, batch(readings[i * 100 : (i + 1) * 100])) for i in range(7)]
    stack.produce(records)
    wait_until(lambda: stack.health()[1].get("held_rows") == 700, 20, "700 held rows", proc)

    status, health = stack.health()
    assert (status, health["assigned_partitions"], health["database"]) == (200, 3, "up")
    metrics = stack.metrics()
    assert metrics["f2pipe_sink_records_total"] == 7
    lag = sum(v for k, v in metrics.items() if k.startswith("f2pipe_sink_consumer_lag{"))
    assert lag == 7  # consumed, none committed
    assert count(stack.conninfo) == 0

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, stack.logs()
    assert_exactly(stack.conninfo, readings)
    assert stack.committed() == {0: 3, 1: 2, 2: 2}


def test_kill_9_mid_batch_then_restart_lands_every_row_once(stack: Stack) -> None:
    # Phase 1: two batches written (2 x 2,000 rows), one record held when the sink dies.
    proc = stack.start(BATCH_SIZE="2000", FLUSH_INTERVAL="3600")
    first = make_readings(4500)
    records = [(0, batch(first[i : i + 500])) for i in range(0, 4500, 500)]
    stack.produce(records)
    wait_until(
        lambda: count(stack.conninfo) == 4000 and stack.health()[1].get("held_rows") == 500,
        20,
        "two batches written and one record held",
        proc,
    )
    proc.kill()
    proc.wait(10)
    assert count(stack.conninfo) == 4000
    assert stack.committed()[0] == 8

    # Phase 2: a backlog, and a second kill while the restarted sink works through it.
    second = make_readings(BACKLOG)
    stack.produce(
        [(i % 3, batch(second[j : j + 500])) for i, j in enumerate(range(0, BACKLOG, 500))]
    )
    proc = stack.start(BATCH_SIZE="1000")
    wait_until(lambda: count(stack.conninfo) > 50_000, 30, "part of the backlog", proc)
    proc.kill()
    proc.wait(10)
    at_kill = count(stack.conninfo)

    proc = stack.start()
    everything = first + second
    wait_until(lambda: count(stack.conninfo) >= len(everything), 60, "every row", proc)
    assert_exactly(stack.conninfo, everything)
    expected = produced_per_partition(records)
    for i in range(BACKLOG // 500):
        expected[i % 3] = expected.get(i % 3, 0) + 1
    wait_until(lambda: stack.committed() == expected, 10, "offsets committed to the end", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    print(f"second kill at {at_kill} of {len(everything)} rows")


def test_a_write_held_past_max_poll_interval_has_its_commit_refused_and_lands_once(
    stack: Stack,
) -> None:
    """A lock on telemetry.readings (a migration, an ALTER by hand) holds sink A's COPY past
    max.poll.interval.ms (5 s here): librdkafka takes A out of the group, and sink B, started
    meanwhile, gets every partition. When the lock goes, A's write commits, and the broker
    refuses A's offset commit (counted; A goes on). B reads the same records from the last
    committed offsets and writes them again, skipped by the keys: every row once, the
    group's offsets at the end; A rejoins and the two share the partitions."""
    a = stack.start()
    first = make_readings(300)
    records = [(i % 3, batch(first[i * 100 : (i + 1) * 100])) for i in range(3)]
    stack.produce(records)
    wait_until(lambda: stack.committed() == {0: 1, 1: 1, 2: 1}, 20, "the first records", a)
    refused = stack.metrics()["f2pipe_sink_offset_commit_failures_total"]
    b_port = free_port()
    with psycopg.connect(stack.conninfo) as lock:
        lock.execute("LOCK TABLE telemetry.readings IN EXCLUSIVE MODE")  # writes wait
        second = make_readings(600)
        held = [(i % 3, batch(second[i * 100 : (i + 1) * 100])) for i in range(6)]
        stack.produce(held)
        wait_until(lambda: stack.metrics()["f2pipe_sink_records_total"] == 9, 20, "A reads", a)
        wait_until(lambda: "leaving group" in stack.logs(), 20, "A out of the group", a)
        # Started only now: Tansu completes no join that began while A was blocked.
        b = stack.start(port=b_port, ready=False)  # ready once it has partitions

        def b_owns_all() -> bool:
            return stack.health(b_port)[1].get("assigned_partitions") == 3

        wait_until(b_owns_all, 30, "B owning every partition", b)
        assert count(stack.conninfo) == 300  # A's write still waits for the lock
    # The lock is gone with the transaction.

    def a_refused() -> bool:
        return stack.metrics()["f2pipe_sink_offset_commit_failures_total"] > refused

    wait_until(a_refused, 20, "A's commit refused", a)
    expected = produced_per_partition(records + held)
    wait_until(lambda: stack.committed() == expected, 30, "offsets committed to the end", b)
    assert_exactly(stack.conninfo, first + second)

    def shared() -> bool:  # A back in the group at its next poll
        owned = [
            int(stack.health(port)[1].get("assigned_partitions", 0)) for port in (None, b_port)
        ]
        return min(owned) > 0 and sum(owned) == 3

    wait_until(shared, 30, "A and B sharing the partitions", a)
    assert b.poll() is None, stack.logs()


def test_duplicated_messages_land_once(stack: Stack) -> None:
    proc = stack.start()
    readings = make_readings(3000)
    unique = [(i % 3, batch(readings[i * 300 : (i + 1) * 300])) for i in range(10)]
    internal = batch(readings[:50] + readings[:50])  # the same key twice in one record
    elsewhere = (2, batch(readings[300:600]))  # record 1's readings on another partition
    stack.produce([*unique, *unique, (1, internal), elsewhere, *unique[:3]])
    wait_until(lambda: count(stack.conninfo) == 3000, 20, "3,000 rows", proc)
    wait_until(
        lambda: stack.metrics()["f2pipe_sink_records_total"] == 25, 20, "all records consumed"
    )
    wait_until(lambda: stack.health()[1].get("held_rows") == 0, 10, "nothing held", proc)
    assert_exactly(stack.conninfo, readings)
    metrics = stack.metrics()
    assert metrics['f2pipe_sink_rows_written_total{table="readings"}'] == 3000
    assert metrics['f2pipe_sink_rows_duplicate_total{table="readings"}'] == 3000 + 100 + 300 + 900
    assert metrics['f2pipe_sink_dead_letters_total{reason="invalid_record"}'] == 0
    # Every reading of every committed batch, replays included.
    assert metrics["f2pipe_sink_end_to_end_latency_seconds_count"] == 7300
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_poison_records_are_dead_lettered_and_do_not_block_the_partition(stack: Stack) -> None:
    proc = stack.start()
    good_before, mixed_good, good_after = make_readings(100), make_readings(20), make_readings(100)
    bad_rows = [Reading(next(_timestamps), 1, 1, float("nan")), Reading(-5, 1, 1, 1.0)]
    mixed = batch([*mixed_good[:10], *bad_rows, *mixed_good[10:]])
    refused = batch(make_readings(0), [Event(next(_timestamps), 5, "Not A Kind", {})])
    refused_readings = make_readings(30)
    refused_mixed = batch(refused_readings, [Event(next(_timestamps), 5, "BAD!", {"x": 1})])
    values = [batch(good_before), b"\x93garbage", mixed, refused, refused_mixed, batch(good_after)]
    stack.produce([(0, v) for v in values])

    letters = stack.dead_letters(4)
    by_offset = {letter.source_offset or 0: letter for _, letter in letters}
    assert sorted(by_offset) == [1, 2, 3, 4]
    expected_reasons = {
        1: Reason.bad_batch,
        2: Reason.invalid_record,
        3: Reason.constraint_violation,
        4: Reason.constraint_violation,
    }
    for offset, reason in expected_reasons.items():
        letter = by_offset[offset]
        assert letter.reason is reason
        assert letter.stage is Stage.sink
        assert letter.source_topic == stack.topic
        assert letter.source_partition == 0
        assert letter.original == values[offset]  # unchanged, so an operator can replay it
    assert "2 of 22 rows invalid" in by_offset[2].detail
    assert "not finite" in by_offset[2].detail
    assert "1970-01-01" in by_offset[2].detail

    # Everything that can be stored was, before and after the poison, and its offset committed.
    wait_until(lambda: stack.committed() == {0: 6, 1: -1001, 2: -1001}, 15, "offsets committed")
    assert_exactly(stack.conninfo, good_before + mixed_good + refused_readings + good_after)
    metrics = stack.metrics()
    assert metrics['f2pipe_sink_dead_letters_total{reason="bad_batch"}'] == 1
    assert metrics['f2pipe_sink_dead_letters_total{reason="constraint_violation"}'] == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_records_too_large_to_dead_letter_whole_go_as_a_preview_and_the_partition_moves_on(
    stack: Stack,
) -> None:
    proc = stack.start()
    # Larger than Kafka's default record limit: as a dead letter with its headers it could
    # never be produced, and a sink that retried it would hold the partition for good.
    garbage = bytes(range(256)) * 4100  # 1,049,600 bytes
    refused = batch([], [Event(next(_timestamps), 5, "BAD!", {"pad": "p" * 1000})] * 400)
    after = make_readings(50)
    values = [garbage, refused, batch(after)]
    stack.produce([(0, v) for v in values], **{"message.max.bytes": 2_000_000})

    letters = {letter.source_offset: letter for _, letter in stack.dead_letters(2)}
    for offset, reason in {0: Reason.bad_batch, 1: Reason.constraint_violation}.items():
        letter = letters[offset]
        assert letter.reason is reason
        assert letter.original == values[offset][:PREVIEW_BYTES]
        assert letter.original_size == len(values[offset])
        assert letter.original_sha256 == hashlib.sha256(values[offset]).hexdigest()
    # Each look at the group's offsets is a new consumer finding the coordinator, seconds on
    # a busy machine (one CI run timed out at 15 s): the wait is generous, its report exact.
    wanted = {0: 3, 1: -1001, 2: -1001}
    seen: list[dict[int, int]] = [{}]

    def committed() -> bool:
        seen[0] = stack.committed()
        return seen[0] == wanted

    try:
        wait_until(committed, 60, "offsets committed")
    except AssertionError as exc:
        detail = f"{exc}: wanted {wanted}, last seen {seen[0]}\n{stack.logs()}"
        raise AssertionError(detail) from None
    assert_exactly(stack.conninfo, after)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_a_dead_letter_kafka_refuses_is_sent_without_the_original_bytes(
    stack: Stack,
) -> None:
    original = b"r" * 5000  # whole in a letter, but over this producer's record limit
    letter = DeadLetter(stage=Stage.sink, reason=Reason.bad_batch, detail="not a batch",
                        original=original, source_topic=stack.topic, source_partition=0,
                        source_offset=7)  # fmt: skip
    settings = KafkaSettings(
        kafka_bootstrap_servers=stack.bootstrap, kafka_deadletter_topic=stack.dlq
    )
    producer = DeadLetterProducer(settings, **{"message.max.bytes": 2000})
    producer.send([letter])
    producer.close()
    [(_, sent)] = stack.dead_letters(1)
    assert sent.original == b""
    assert sent.original_size == 5000
    assert sent.original_sha256 == hashlib.sha256(original).hexdigest()
    assert (sent.reason, sent.source_offset) == (Reason.bad_batch, 7)


def test_postgres_down_for_10_seconds_loses_and_duplicates_nothing(
    stack: Stack, postgres_server: PostgresServer
) -> None:
    proc = stack.start(FLUSH_INTERVAL="0.1")
    produced: list[Reading] = []
    stop = threading.Event()

    def stream() -> None:
        producer = Producer({"bootstrap.servers": stack.bootstrap, "enable.idempotence": True})
        i = 0
        while not stop.is_set():
            readings = make_readings(200)
            producer.produce(stack.topic, batch(readings), partition=i % 3)
            producer.poll(0)
            produced.extend(readings)
            i += 1
            time.sleep(0.05)
        assert producer.flush(30) == 0

    producer = threading.Thread(target=stream, daemon=True)
    producer.start()
    try:
        wait_until(lambda: count(stack.conninfo) > 5000, 20, "rows flowing", proc)
        postgres_server.stop()
        outage_started = time.monotonic()
        wait_until(lambda: stack.health()[0] == 503, 10, "/healthz to report the outage", proc)
        _, health = stack.health()
        assert health["database"] == "down"
        assert health["paused"] is True
        assert health["held_rows"] > 0
        # Several retries with backoff (0.2 s doubling); longer proves nothing more.
        time.sleep(max(0.0, 10 - (time.monotonic() - outage_started)))
    finally:
        postgres_server.start()  # shared by the whole session: it must be up again
    time.sleep(3)  # records keep arriving after the outage
    stop.set()
    producer.join(30)

    wait_until(lambda: count(stack.conninfo) >= len(produced), 60, "every row", proc)
    assert_exactly(stack.conninfo, produced)
    wait_until(lambda: stack.health()[0] == 200, 10, "healthy again", proc)
    metrics = stack.metrics()
    assert metrics["f2pipe_sink_db_outages_total"] == 1
    assert metrics["f2pipe_sink_write_retries_total"] >= 3
    assert metrics["f2pipe_sink_paused"] == 0
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, stack.logs()
