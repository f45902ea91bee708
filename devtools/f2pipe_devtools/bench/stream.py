"""`f2pipe bench stream`: the api's live stream (GET /v1/stream) under the pipeline's load.

Starts its own Tansu broker and PostgreSQL (migrated, a fleet of FLEET controllers registered
through the api, so every device maps to a MAC), and `f2pipe api` as its own process, as
deployed. A producer writes processed batches (the processor's framing, records.py) of
PER_RECORD readings at RATE readings/s, each reading stamped with the moment it is produced;
SSE clients (httpx, in a process of their own: the api's CPU is its own) read the stream.
Phases: 0, 1 and 100 clients, PHASE_SECONDS each. Measured per phase:

- latency produce → client receive, p50/p99, of every reading (a reading counts the latency of
  the oldest reading of the chunk it arrived in: an upper bound);
- readings lost: produced minus received, per client (0 for clients that keep up);
- the producer's achieved rate and the api process's CPU: the pipeline's processes are separate
  and the api reads its own copy of the topic, so "does not slow the pipeline" is the producer
  keeping its rate and the api keeping up, whatever the clients.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import psycopg
from confluent_kafka import Producer

from f2pipe.migrate import apply_migrations
from f2pipe_api.tokens import Role, create_token
from f2pipe_devtools.bench.report import Measurement, Report
from f2pipe_devtools.env import kafka_env, postgres_env, service_env
from f2pipe_devtools.servers import KafkaBroker, PostgresServer, free_port
from f2pipe_shared.kafka import client_config, ensure_topics
from f2pipe_shared.records import ProcessedBatch, Reading, encode_processed_batch
from f2pipe_shared.settings import KafkaSettings

RATE = 1000  # readings per second
PER_RECORD = 10
FLEET = 20
PHASE_SECONDS = 30
CLIENT_COUNTS = (0, 1, 100)
TOPIC = "processed-iot-data"
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    clients: int
    produced: int  # readings
    rate: float  # readings/s achieved by the producer
    api_cpu: float  # cores, mean over the phase
    api_rss_mb: float
    received: list[int]  # per client
    latency_ms: Counter[int]  # ms → readings
    overflows: int


def run(report: Report, repeats: int, min_seconds: float, quick: bool = False) -> None:
    del repeats, min_seconds  # one long run per phase: the percentiles come from its readings
    seconds = 8 if quick else PHASE_SECONDS
    with tempfile.TemporaryDirectory(prefix="f2pipe-bench-stream-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # PostgreSQL runs as `postgres` when we are root
        with PostgresServer(root / "pg", durable=False) as pg, KafkaBroker(root / "kafka") as kafka:
            conninfo = pg.create_database("bench_stream")
            apply_migrations(conninfo)
            settings = KafkaSettings(kafka_bootstrap_servers=kafka.bootstrap_servers)
            ensure_topics(settings, {TOPIC: 6})
            admin, _ = create_token(conninfo, "bench-admin", Role.admin)
            viewer, _ = create_token(conninfo, "bench-viewer", Role.viewer)
            port = free_port()
            api = start_api(conninfo, kafka.bootstrap_servers, port, root / "api.log")
            url = f"http://127.0.0.1:{port}"
            try:
                devices = seed(url, admin, conninfo)
                producer = Producer(client_config(settings) | {"linger.ms": 5})
                for n in CLIENT_COUNTS:
                    phase = measure(url, viewer, n, seconds=seconds, producer=producer,
                                    devices=devices, pid=api.pid)  # fmt: skip
                    add(report, phase)
            finally:
                api.terminate()
                api.wait(30)


def start_api(conninfo: str, bootstrap: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = service_env(
        postgres_env(conninfo),
        kafka_env(bootstrap, processed=TOPIC),
        API_STREAM_MAX_CLIENTS="200",
        LOG_LEVEL="WARNING",
    )
    f2pipe = str(Path(sys.executable).parent / "f2pipe")
    with log.open("wb") as out:
        api = subprocess.Popen([f2pipe, "api", "--port", str(port)], env=env, stdout=out,
                               stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                time.sleep(3)  # the stream's feed assigns its partitions
                return api
        except httpx.HTTPError:
            pass
        if api.poll() is not None:
            break
        time.sleep(0.2)
    api.kill()
    raise RuntimeError(f"f2pipe api did not start: {log.read_text()[-2000:]}")


def seed(url: str, admin: str, conninfo: str) -> list[int]:
    """FLEET controllers, registered as an operator would: their device ids."""
    headers = {"Authorization": f"Bearer {admin}"}
    for i in range(FLEET):
        body = {"mac": f"b0c0de{i:06x}", "name": f"bench {i}"}
        r = httpx.post(f"{url}/v1/controllers", json=body, headers=headers, timeout=10)
        r.raise_for_status()
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT id FROM registry.devices WHERE mac LIKE 'b0c0de%'").fetchall()
    return [r[0] for r in rows]


def measure(
    url: str, token: str, n: int, *, seconds: float, producer: Producer, devices: list[int],
    pid: int,
) -> Phase:  # fmt: skip
    clients = None
    if n:
        clients = subprocess.Popen(
            [sys.executable, "-m", "f2pipe_devtools.bench.stream", url, token, str(n)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert clients.stdout is not None
        ready = clients.stdout.readline()
        if ready.strip() != b"ready":
            raise RuntimeError(f"stream clients did not connect: {ready!r}")
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    produced, rate = produce(producer, devices, seconds)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    rss = rss_mb(pid)
    time.sleep(3)  # the last readings reach the clients
    received: list[int] = []
    latency: Counter[int] = Counter()
    overflows = 0
    if clients is not None:
        out, _ = clients.communicate(b"stop\n", timeout=60)
        result = json.loads(out)
        received = result["received"]
        latency = Counter({int(k): v for k, v in result["latency_ms"].items()})
        overflows = result["overflows"]
    return Phase(n, produced, rate, (cpu1 - cpu0) / (t1 - t0), rss, received, latency, overflows)


def produce(producer: Producer, devices: list[int], seconds: float) -> tuple[int, float]:
    """RATE readings/s for `seconds`, each stamped with its produce time; (readings, rate)."""
    records = int(seconds * RATE / PER_RECORD)
    start = time.monotonic()
    for i in range(records):
        delay = start + i * PER_RECORD / RATE - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now_us = time.time_ns() // 1000
        readings = [
            Reading(now_us, devices[(i * PER_RECORD + j) % len(devices)], 1, float(i))
            for j in range(PER_RECORD)
        ]
        producer.produce(TOPIC, encode_processed_batch(ProcessedBatch(0, i, readings, [])))
        producer.poll(0)
    elapsed = time.monotonic() - start
    producer.flush(30)
    return records * PER_RECORD, records * PER_RECORD / elapsed


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(hist: Counter[int], q: float) -> float:
    total = sum(hist.values())
    seen = 0
    for ms in sorted(hist):
        seen += hist[ms]
        if seen >= q * total:
            return float(ms)
    return float("nan")


def add(report: Report, p: Phase) -> None:
    label = f"{p.clients} client{'s' if p.clients != 1 else ''}"
    report.add(Measurement(f"producer rate, {label}", "readings/s", [p.rate],
                           f"target {RATE}/s, {p.produced:,} produced"))  # fmt: skip
    report.add(Measurement(f"api CPU, {label}", "% of a core", [p.api_cpu * 100],
                           f"RSS {p.api_rss_mb:.0f} MB at the end"))  # fmt: skip
    if not p.clients:
        return
    lost = [p.produced - r for r in p.received]
    report.add(Measurement(f"latency p50, {label}", "ms", [percentile(p.latency_ms, 0.5)]))
    report.add(Measurement(f"latency p99, {label}", "ms", [percentile(p.latency_ms, 0.99)],
                           f"max {max(p.latency_ms, default=0)} ms"))  # fmt: skip
    report.add(Measurement(
        f"readings lost, {label}", "readings", [float(sum(lost))],
        f"{len(p.received)} clients, worst {max(lost)}, {p.overflows} overflowed, "
        f"median received {statistics.median(p.received):,.0f}",
    ))  # fmt: skip


# -- the clients' process: `python -m f2pipe_devtools.bench.stream URL TOKEN N` -------------


@dataclass
class Clients:
    url: str
    token: str
    counts: list[int]  # readings received, per client
    hist: Counter[int]  # latency ms → readings
    ready: asyncio.Event
    connected: int = 0
    overflows: int = 0


async def client(http: httpx.AsyncClient, c: Clients, index: int) -> None:
    headers = {"Authorization": f"Bearer {c.token}"}
    counts, hist = c.counts, c.hist
    async with http.stream("GET", f"{c.url}/v1/stream", headers=headers) as r:
        r.raise_for_status()
        c.connected += 1
        if c.connected == len(counts):
            c.ready.set()
        carry = b""
        async for raw in r.aiter_raw():
            data = carry + raw
            end = data.rfind(b"\n\n")
            if end < 0:
                carry = data
                continue
            frames, carry = data[: end + 2], data[end + 2 :]
            n = frames.count(b"event: reading")
            if b"event: overflow" in frames:
                c.overflows += 1
            if not n:
                continue
            counts[index] += n
            at = frames.index(b'"timestamp":"') + 13
            stamp = datetime.fromisoformat(frames[at : frames.index(b'"', at)].decode())
            hist[int(time.time() * 1000 - stamp.timestamp() * 1000)] += n


async def clients_main(url: str, token: str, n: int) -> None:
    c = Clients(url, token, [0] * n, Counter(), asyncio.Event())
    limits = httpx.Limits(max_connections=n + 1, max_keepalive_connections=0)
    timeout = httpx.Timeout(30, read=None)  # a stream waits as long as it must
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        tasks = [asyncio.create_task(client(http, c, i)) for i in range(n)]
        await c.ready.wait()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"received": c.counts, "latency_ms": c.hist, "overflows": c.overflows}))


if __name__ == "__main__":
    asyncio.run(clients_main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
