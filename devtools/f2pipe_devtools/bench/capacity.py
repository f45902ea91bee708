"""`f2pipe bench capacity`: the pipeline's capacity measured apart from its load generator.

In e2e the simulator publishes while the pipeline carries, on the same two cores, so the
as-fast-as-it-goes figure is partly the simulator's. Here the load is queued first:

1. a fresh `f2pipe dev` stack (no simulator of its own); three persistent MQTT sessions on its
   Mosquitto, each subscribed to stat/# and tele/#: the bridge's own (svc-bridge), a bare
   paho subscriber's (svc-operator) and the C client mosquitto_sub's (svc-bench-sub, issued
   here and given read rights in the stack's copy of the ACL);
2. bridge and processor stopped, the simulator's load mode queues the backlog (300,000
   messages, 30,000 with --quick) for all three sessions and exits once the broker
   acknowledged every message; the sink keeps running (nothing reaches it meanwhile);
3. bridge and processor started together: seconds until the sink has written every reading
   of the simulator's ledger, then the database against the ledger (missing, unexpected or
   duplicated);
4. the same backlog drained by the bare paho subscriber (the Python client's ceiling) and by
   mosquitto_sub (the broker's ceiling), one after the other;
5. CPU per message of every process during each drain, and a machine canary (a fixed
   pure-Python json.loads loop) so runs on different machines can be compared.

`--instances N` runs N bridges (one $share group, each its own identity), N processors (one
Faust group) and N sinks (one consumer group) instead of one of each (dev/instances.py). The
backlog is then queued across the N bridge sessions (the broker hands each message of the
group to one of them, also while they are away); the stage rates and CPU are summed over a
stage's instances, with each instance's CPU listed too.

Why the sinks keep running: on Tansu, two sinks started at the same moment as two Faust
workers were never assigned a partition (60 s and more; two sinks alone, or started while
the workers run, join within 5 s), so the backlog never reached the database.

Why other identities than the bridge's: the broker makes the certificate's CN the client id
(use_username_as_clientid), so a second client with the bridge's certificate would take
over the bridge's session instead of having its own.
"""

from __future__ import annotations

import json
import math
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.samples import Sample as PromSample

from f2pipe_certgen.ca import CertificateAuthority
from f2pipe_certgen.files import PRIVATE, PUBLIC, replace
from f2pipe_devtools.bench.e2e import (
    _proc_stats,
    bench_stack,
    process_stats,
    simulator,
    stored_since,
)
from f2pipe_devtools.bench.report import Measurement, Report
from f2pipe_devtools.dev import instances as scaled
from f2pipe_devtools.dev.procs import ProcessError
from f2pipe_devtools.dev.stack import DevStack
from f2pipe_devtools.dev.status import fetch
from f2pipe_devtools.testkit.ledger import Row, expected_rows, iter_ledger

BACKLOG, QUICK_BACKLOG = 300_000, 30_000  # messages
CONTROLLERS, QUICK_CONTROLLERS = 200, 100  # as e2e
PIPELINE = ("bridge", "processor", "sink")  # the stages
STOPPED = ("bridge", "processor")  # while the backlog queues: the sink keeps running
TOPICS = ("stat/#", "tele/#")  # what the bridge subscribes to
RECEIVE_MAXIMUM = 5000  # the bridge's window (BRIDGE_MAX_IN_FLIGHT): the same for all three
PAHO_IDENTITY = "operator"  # issued/operator.crt: the ACL lets svc-operator read both
C_IDENTITY = "bench-sub"  # svc-bench-sub: issued here, read rights added to the stack's ACL
SESSION_EXPIRY = 3600  # seconds: outlives the bench
STALL = 60.0  # seconds without a new row written: the rest is missing
POLL = 0.25  # seconds between two scrapes while the pipeline drains

# The canary: what every message costs the processor first, on a payload as devices send it.
CANARY_PAYLOAD = (
    '{"timestamp": "2026-11-24 10:00:00.000000", "data": "01 03 06 09 29 11 D7 02 64 4B 1E"}'
)
CANARY_LOOPS = 200_000
CANARY_REPEATS = 5

# A bare subscriber as fast as paho goes (bench/bridge.py's, with the broker's mutual TLS): QoS
# 1, automatic acknowledgements, counting only. `subscribe` makes the persistent session and
# exits 1 if the broker refused a subscription; `drain` prints "messages seconds cpu_seconds"
# counted from the first message (its own CPU: paho's network thread and the callbacks).
TLS_SUBSCRIBER = r"""
import ssl, sys, time, threading
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port, total, mode, cn, ca, cert, key, receive_max, expiry = sys.argv[1:10]
total = int(total)
done, subscribed = threading.Event(), threading.Event()
state = {"n": 0, "t0": 0.0, "cpu0": 0.0, "t1": 0.0, "cpu1": 0.0, "refused": False}
def on_message(c, u, m):
    if state["n"] == 0: state["t0"], state["cpu0"] = time.perf_counter(), time.process_time()
    state["n"] += 1
    if state["n"] == total:
        state["t1"], state["cpu1"] = time.perf_counter(), time.process_time(); done.set()
def on_subscribe(c, u, mid, codes, props):
    state["refused"] = any(code.is_failure for code in codes); subscribed.set()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cn, protocol=mqtt.MQTTv5)
c.tls_set(ca_certs=ca, certfile=cert, keyfile=key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
c.on_message, c.on_subscribe = on_message, on_subscribe
p = Properties(PacketTypes.CONNECT)
p.SessionExpiryInterval, p.ReceiveMaximum = int(expiry), int(receive_max)
c.connect("127.0.0.1", int(port), clean_start=False, properties=p)
c.loop_start()
if mode == "subscribe":
    c.subscribe([("stat/#", 1), ("tele/#", 1)])
    ok = subscribed.wait(30) and not state["refused"]
    c.disconnect(); c.loop_stop(); sys.exit(0 if ok else 1)
done.wait(900)
c.disconnect(); c.loop_stop()
print(state["n"], state["t1"] - state["t0"], state["cpu1"] - state["cpu0"])
"""


@dataclass(frozen=True)
class Identity:
    """An MQTT client identity of the stack: CN (the client id too), certificate, key."""

    cn: str
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class Drain:
    """One drain of the backlog: how many, how long, and CPU seconds by process."""

    label: str
    messages: int
    seconds: float
    cpu: dict[str, float]
    payload: int | None = None  # bytes of payload received, when the subscriber says

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("nan")


# --- arithmetic and parsing -----------------------------------------------------------------


def canary(loops: int = CANARY_LOOPS, repeats: int = CANARY_REPEATS) -> float:
    """json.loads of a fixed payload per second, median of ``repeats``: the machine's speed
    for the kind of work the pipeline's Python does, independent of the stack."""
    loads, payload, rates = json.loads, CANARY_PAYLOAD, []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            loads(payload)
        rates.append(loops / (time.perf_counter() - start))
    return statistics.median(rates)


def readings_written(samples: Iterable[PromSample]) -> float | None:
    """The sink's readings rows inserted (not its events rows); None if it did not answer."""
    found = None
    for sample in samples:
        if sample.name == "f2pipe_sink_rows_written_total" and sample.labels.get("table") == (
            "readings"
        ):
            found = (found or 0.0) + sample.value
    return found


def counter(samples: Iterable[PromSample], name: str) -> float | None:
    """A counter's value, labels summed away; None if the page does not have it."""
    values = [s.value for s in samples if s.name == name]
    return sum(values) if values else None


def ledger_diff(expected: set[Row], stored: list[Row]) -> tuple[int, int]:
    """(missing, unexpected or duplicated) readings: the database against the ledger."""
    got = set(stored)
    return len(expected - got), len(got - expected) + len(stored) - len(got)


def cpu_deltas(
    before: Mapping[str, float], after: Mapping[str, float], startup: Mapping[str, float]
) -> dict[str, float]:
    """CPU seconds each process spent between two snapshots.

    A process absent ``before`` was started in between: its start-up cost is taken off as
    ``startup`` says (the CPU its first instance had used when it was healthy), since that
    does not scale with the backlog. Never below 0.
    """
    out = {}
    for name, cpu in after.items():
        base = before[name] if name in before else startup.get(name, 0.0)
        out[name] = max(0.0, cpu - base)
    return out


def per_message_us(cpu_seconds: float, messages: int) -> float:
    return cpu_seconds / messages * 1e6 if messages else float("nan")


def parse_drain_line(text: str) -> tuple[int, float, float]:
    """The bare subscriber's last line: messages, seconds, CPU seconds."""
    lines = text.strip().splitlines()
    if not lines:
        raise ValueError("the bare subscriber printed nothing")
    n, seconds, cpu = lines[-1].split()
    return int(n), float(seconds), float(cpu)


def payload_bytes(output: bytes) -> int:
    """The sum of mosquitto_sub's `-F %l` lines (each message's payload length)."""
    return sum(int(line) for line in output.split())


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def acl_entry(cn: str, topics: Iterable[str]) -> str:
    """Mosquitto ACL lines letting ``cn`` read ``topics``."""
    lines = ["", "# Added by f2pipe bench capacity: a bare subscriber of its own.", f"user {cn}"]
    return "\n".join([*lines, *(f"topic read {t}" for t in topics)]) + "\n"


def cpu_of(stats: Mapping[str, tuple[float, float, float]]) -> dict[str, float]:
    return {name: cpu for name, (cpu, _peak, _rss) in stats.items()}


def pipeline_names(instances: int) -> list[str]:
    """Every instance of the pipeline's stages, bridges first (stopped first: nothing is
    left half-forwarded)."""
    return [name for stage in PIPELINE for name in scaled.names(stage, instances)]


def by_stage(cpu: Mapping[str, float]) -> dict[str, float]:
    """A value (CPU seconds, work) of each pipeline stage: its instances (`bridge`, `bridge-2`,
    …) summed; the servers left out."""
    out: dict[str, float] = {}
    for name, seconds in cpu.items():
        stage = scaled.parse(name)[0]
        if stage in PIPELINE:
            out[stage] = out.get(stage, 0.0) + seconds
    return out


# --- identities and sessions ----------------------------------------------------------------


def stack_identity(stack: DevStack, name: str) -> Identity:
    """A service identity the stack's certgen bootstrap issued (issued/<name>.crt and .key)."""
    return Identity(f"svc-{name}", stack.issued_dir / f"{name}.crt",
                    stack.issued_dir / f"{name}.key", stack.ca_dir / "ca.crt")  # fmt: skip


def new_identity(stack: DevStack, name: str, work: Path) -> Identity:
    """A service certificate from the stack's CA, read rights on TOPICS in the stack's copy
    of the ACL, and the broker told to reload it (run-broker.sh passes SIGHUP on)."""
    ca = CertificateAuthority.load(stack.ca_dir)
    cn = f"svc-{name}"
    issued, key_pem = ca.issue_key_and_certificate(cn, days=1, kind="service")
    cert, key = work / f"{name}.crt", work / f"{name}.key"
    replace(key, key_pem.encode(), PRIVATE)
    replace(cert, issued.pem.encode(), PUBLIC)
    with (stack.root / "broker" / "acl").open("a") as acl:
        acl.write(acl_entry(cn, TOPICS))
    pid = stack.supervised["mosquitto"].server.pid
    assert pid is not None
    os.kill(pid, signal.SIGHUP)
    return Identity(cn, cert, key, stack.ca_dir / "ca.crt")


def paho_argv(stack: DevStack, who: Identity, mode: str, total: int) -> list[str]:
    return [sys.executable, "-c", TLS_SUBSCRIBER, str(stack.options.ports.mqtt), str(total),
            mode, who.cn, str(who.ca), str(who.cert), str(who.key), str(RECEIVE_MAXIMUM),
            str(SESSION_EXPIRY)]  # fmt: skip


def mosquitto_sub_argv(stack: DevStack, who: Identity) -> list[str]:
    """MQTT 5 as the bridge, its window, a persistent session; one short line per message."""
    argv = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(stack.options.ports.mqtt),
            "-V", "mqttv5", "-c", "-x", str(SESSION_EXPIRY), "-i", who.cn, "-q", "1",
            "-D", "connect", "receive-maximum", str(RECEIVE_MAXIMUM),
            "--cafile", str(who.ca), "--cert", str(who.cert), "--key", str(who.key),
            "-F", "%l"]  # fmt: skip
    for topic in TOPICS:
        argv += ["-t", topic]
    return argv


def subscribe_sessions(stack: DevStack, paho: Identity, c_client: Identity | None) -> None:
    """The bare subscribers' persistent sessions, made before the backlog is published (the
    bridge's exists: the stack's bridge is healthy only once it subscribed)."""
    subprocess.run(paho_argv(stack, paho, "subscribe", 0), check=True, timeout=60)
    if c_client is None:
        return
    for _ in range(10):  # the broker reloads its ACL a moment after the SIGHUP
        result = subprocess.run([*mosquitto_sub_argv(stack, c_client), "-E"], timeout=60,
                                capture_output=True, text=True, check=False)  # fmt: skip
        if result.returncode == 0 and "denied" not in result.stderr.lower():
            return
        time.sleep(1)
    raise RuntimeError(f"mosquitto_sub could not subscribe: {result.stderr.strip()}")


# --- the backlog ----------------------------------------------------------------------------


def queue_backlog(stack: DevStack, ledger: Path, count: int, controllers: int) -> None:
    """The simulator's load mode, ``count`` messages as fast as the broker takes them; it
    exits once the broker acknowledged every one."""
    sim = simulator(stack, ledger, None, None, controllers, count=count)
    code = sim.wait(900)
    if code != 0:
        raise RuntimeError(f"the simulator exited with {code}; see {ledger.stem}.log")


def ledger_summary(ledger: Path) -> dict[str, object]:
    """The simulator's summary line (its last), or {} when it wrote none."""
    with ledger.open("rb") as f:
        f.seek(max(0, ledger.stat().st_size - 4096))
        lines = f.read().decode(errors="replace").strip().splitlines()
    try:
        line = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return {}
    return line if isinstance(line, dict) and line.get("type") == "summary" else {}


# --- the drains -----------------------------------------------------------------------------


def start_together(stack: DevStack, names: Iterable[str]) -> float:
    """Start the services at once, without waiting for their health (as `dev up` does): the
    bridge forwards before it reports healthy, and the scrapes must see its first message.
    The monotonic time they were started at."""
    services = {name: stack.service(name) for name in names}
    started = time.monotonic()
    for name, service in services.items():
        stack.services[name] = service
        service.start()
    return started


@dataclass(frozen=True)
class Milestone:
    """A stage's first message, or its whole backlog, as one of its counters shows it."""

    service: str
    counter: str
    whole: bool  # the whole backlog; else the first message

    @property
    def label(self) -> str:
        return f"{self.service}: {'every' if self.whole else 'first'} message"


FIRST_IN = Milestone("bridge", "f2pipe_bridge_received_total", whole=False)
MILESTONES = (
    FIRST_IN,
    # Acknowledged to the broker: Kafka confirmed it.
    Milestone("bridge", "f2pipe_bridge_acknowledged_total", whole=True),
    Milestone("processor", "f2pipe_processor_messages_total", whole=False),
    Milestone("processor", "f2pipe_processor_messages_total", whole=True),
)


def passed(milestone: Milestone, samples: Iterable[PromSample], messages: int) -> bool:
    value = counter(samples, milestone.counter)
    return value is not None and value >= (messages if milestone.whole else 1)


@dataclass
class PipelineDrain:
    started: float  # monotonic: the services were started
    done: float | None  # the sink had written every reading
    written: float  # readings rows the sink wrote
    reached: dict[Milestone, float] = field(default_factory=dict)  # -> monotonic

    def since_start(self, milestone: Milestone) -> float:
        at = self.reached.get(milestone)
        return at - self.started if at is not None else math.nan


def stage_rate(drained: PipelineDrain, service: str, messages: int) -> float:
    """Messages/s of one stage, from its first message to its whole backlog."""
    marks = {m.whole: drained.since_start(m) for m in MILESTONES if m.service == service}
    return ratio(messages, marks[True] - marks[False])


def stage_samples(stack: DevStack, stage: str) -> list[PromSample]:
    """The /metrics samples of every instance of ``stage``: counters sum over them."""
    names = scaled.names(stage, stack.options.instances)
    return [sample for name in names for sample in fetch(stack.metrics_url(name))]


def wait_written(stack: DevStack, backlog: tuple[int, int], started: float) -> PipelineDrain:
    """Scrape the services from their start until the sink wrote every reading of
    ``backlog`` (messages, readings), or wrote nothing new for STALL seconds, noting when
    each milestone passed; a service that exits meanwhile is an error."""
    (messages, readings), changed = backlog, time.monotonic()
    drained = PipelineDrain(started, None, 0.0)
    while True:
        now = time.monotonic()
        for name in pipeline_names(stack.options.instances):
            if not stack.services[name].running:
                raise ProcessError(f"{name} exited while draining:\n{stack.services[name].tail()}")
        pending = [m for m in MILESTONES if m not in drained.reached]
        stages = {m.service for m in pending} | {"sink"}
        pages = {stage: stage_samples(stack, stage) for stage in stages}
        for milestone in pending:
            if passed(milestone, pages[milestone.service], messages):
                drained.reached[milestone] = now
        latest = readings_written(pages["sink"]) or 0.0
        if latest != drained.written:
            drained.written, changed = latest, now
        if drained.written >= readings:
            drained.done = now
            return drained
        if now - changed > STALL:
            return drained
        time.sleep(POLL)


def drain_paho(stack: DevStack, who: Identity, total: int) -> Drain:
    broker_before = cpu_of(process_stats(stack)).get("mosquitto", 0.0)
    out = subprocess.run(paho_argv(stack, who, "drain", total), check=True, timeout=960,
                         capture_output=True, text=True)  # fmt: skip
    n, seconds, cpu = parse_drain_line(out.stdout)
    if n < total:
        raise RuntimeError(f"the bare paho subscriber received {n:,} of {total:,} messages")
    broker = cpu_of(process_stats(stack)).get("mosquitto", 0.0) - broker_before
    return Drain("bare paho subscriber", n, seconds, {"subscriber": cpu, "mosquitto": broker})


def drain_mosquitto_sub(stack: DevStack, who: Identity, total: int) -> Drain:
    """mosquitto_sub prints one line per message: count lines from the first byte until
    ``total``; its CPU and the broker's from /proc meanwhile."""
    proc = subprocess.Popen(mosquitto_sub_argv(stack, who), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    assert proc.stdout is not None
    fd, lines, t0, t1 = proc.stdout.fileno(), 0, 0.0, 0.0
    chunks: list[bytes] = []  # parsed after the clock stopped
    cpu0: dict[str, float] = {}
    deadline = time.monotonic() + 900
    try:
        while lines < total and time.monotonic() < deadline:
            if not select.select([fd], [], [], 1.0)[0]:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            if not lines:
                t0, cpu0 = time.perf_counter(), _cpus(stack, proc.pid)
            lines += chunk.count(b"\n")
            chunks.append(chunk)
        t1 = time.perf_counter()
        cpu1 = _cpus(stack, proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    if lines < total:
        raise RuntimeError(f"mosquitto_sub received {lines:,} of {total:,} messages")
    cpu = {"subscriber": cpu1["self"] - cpu0["self"],
           "mosquitto": cpu1["mosquitto"] - cpu0["mosquitto"]}  # fmt: skip
    return Drain("mosquitto_sub", lines, t1 - t0, cpu, payload_bytes(b"".join(chunks)))


def _cpus(stack: DevStack, pid: int) -> dict[str, float]:
    own = _proc_stats(pid)
    return {"self": own[0] if own else 0.0,
            "mosquitto": cpu_of(process_stats(stack)).get("mosquitto", 0.0)}  # fmt: skip


# --- the suite ------------------------------------------------------------------------------


@dataclass
class Plan:
    backlog: int = BACKLOG
    controllers: int = CONTROLLERS


def run(report: Report, repeats: int, min_seconds: float, quick: bool = False,
        instances: int = 1) -> None:  # fmt: skip
    """One run (each drain takes the whole backlog): ``repeats`` and ``min_seconds`` do not
    apply. ``instances`` of bridge, processor and sink each."""
    scaled.check(instances)
    plan = Plan(QUICK_BACKLOG, QUICK_CONTROLLERS) if quick else Plan()
    report.add(Measurement("machine canary: json.loads", "loads/s", [canary()],
                           f"fixed {len(CANARY_PAYLOAD)}-byte payload, pure Python, "
                           "before the stack starts: compare machines by it"))  # fmt: skip
    report.add(Measurement("instances per stage", "processes", [instances],
                           "bridges ($share group), processors, sinks"))  # fmt: skip
    with bench_stack("f2pipe-bench-capacity-", plan.controllers, instances) as (stack, top):
        measure(report, stack, plan, top)


def measure(report: Report, stack: DevStack, plan: Plan, work: Path) -> None:
    # The services' start-up cost: their CPU when `dev up` found them healthy; taken off
    # the drain's CPU of the instances started again (the bridge forwards as it starts).
    startup = cpu_of(process_stats(stack))
    paho = stack_identity(stack, PAHO_IDENTITY)
    c_client = new_identity(stack, C_IDENTITY, work) if shutil.which("mosquitto_sub") else None
    if c_client is None:
        print("WARNING: no mosquitto_sub (Debian: mosquitto-clients): no broker ceiling",
              file=sys.stderr)  # fmt: skip
    subscribe_sessions(stack, paho, c_client)
    names = [n for n in pipeline_names(stack.options.instances) if scaled.parse(n)[0] in STOPPED]
    for name in names:  # the bridges first: nothing left half-forwarded
        stack.services[name].stop()
    since_us = int(time.time() * 1e6) - 1_000_000
    ledger = work / "backlog.jsonl"
    queue_backlog(stack, ledger, plan.backlog, plan.controllers)
    expected = expected_rows(iter_ledger(ledger))
    messages, readings = expected.published, len(expected.readings)
    add_backlog(report, messages, readings, ledger_summary(ledger))

    before = cpu_of(process_stats(stack))
    drained = wait_written(stack, (messages, readings), start_together(stack, names))
    pipeline_cpu = cpu_deltas(before, cpu_of(process_stats(stack)), startup)
    time.sleep(3)  # a duplicate would arrive now
    diff = ledger_diff(expected.readings, stored_since(stack, since_us))
    add_pipeline(report, drained, (messages, readings), diff, pipeline_cpu)
    if stack.options.instances > 1:
        add_shares(report, {name: work_done(stage, fetch(stack.metrics_url(name)))
                            for stage in PIPELINE
                            for name in scaled.names(stage, stack.options.instances)})  # fmt: skip

    bare = drain_paho(stack, paho, messages)
    add_drain(report, bare)
    pipeline_rate = pipeline_rates(drained, messages)[1]
    report.add(Measurement("pipeline / bare paho", "ratio", [ratio(pipeline_rate, bare.rate)],
                           "messages/s, both from their first message in"))  # fmt: skip
    report.add(Measurement("bridge alone / bare paho", "ratio",
                           [ratio(stage_rate(drained, "bridge", messages), bare.rate)],
                           "as `f2pipe bench bridge`, on the stack's TLS broker"))  # fmt: skip
    if c_client is not None:
        broker = drain_mosquitto_sub(stack, c_client, messages)
        add_drain(report, broker)
        report.add(Measurement("bare paho / mosquitto_sub", "ratio",
                               [ratio(bare.rate, broker.rate)],
                               "the Python client's ceiling against the broker's"))  # fmt: skip


def pipeline_rates(drained: PipelineDrain, messages: int) -> tuple[float, float]:
    """Messages/s from the services' start, and from the bridge's first message in."""
    if drained.done is None:
        return float("nan"), float("nan")
    first = drained.reached.get(FIRST_IN, drained.started)
    return (ratio(messages, drained.done - drained.started),
            ratio(messages, drained.done - first))  # fmt: skip


def add_backlog(
    report: Report, messages: int, readings: int, summary: Mapping[str, object]
) -> None:
    report.add(Measurement("backlog: messages", "messages", [messages],
                           "acknowledged by the broker, queued for the bridges' sessions "
                           "and the two bare subscribers'"))  # fmt: skip
    report.add(Measurement("backlog: readings", "readings", [readings], "in the ledger"))
    rate = summary.get("load_rate")
    if isinstance(rate, int | float):
        report.add(Measurement("backlog: simulator generated", "messages/s", [float(rate)],
                               "the load generator alone, for comparison"))  # fmt: skip


def add_pipeline(report: Report, drained: PipelineDrain, backlog: tuple[int, int],
                 diff: tuple[int, int], cpu: Mapping[str, float]) -> None:  # fmt: skip
    """``backlog``: (messages, readings) of the ledger; ``diff``: (missing, unexpected)."""
    (messages, readings), (missing, extra) = backlog, diff
    from_start, from_first = pipeline_rates(drained, messages)
    seconds = (drained.done - drained.started) if drained.done is not None else float("nan")
    note = "" if drained.done is not None else f"INCOMPLETE: {drained.written:,.0f} written"
    report.add(Measurement("pipeline: start -> every reading stored", "s", [seconds],
                           note or "bridge and processor started together"))  # fmt: skip
    for milestone in MILESTONES:
        report.add(Measurement(f"pipeline: start -> {milestone.label}", "s",
                               [drained.since_start(milestone)], milestone.counter))  # fmt: skip
    report.add(Measurement("pipeline: messages/s", "messages/s", [from_start],
                           "from the services' start (start-up included)"))  # fmt: skip
    report.add(Measurement("pipeline: readings/s", "readings/s",
                           [ratio(readings, seconds)], "from the services' start"))  # fmt: skip
    report.add(Measurement("pipeline: messages/s after the first in", "messages/s",
                           [from_first], "from the bridge's first message received"))  # fmt: skip
    report.add(Measurement("pipeline: readings/s after the first in", "readings/s",
                           [from_first * readings / messages if messages else math.nan],
                           "from the bridge's first message received"))  # fmt: skip
    for service in ("bridge", "processor"):
        report.add(Measurement(f"pipeline: {service} alone", "messages/s",
                               [stage_rate(drained, service, messages)],
                               "from its first message to its last"))  # fmt: skip
    report.add(Measurement("pipeline: missing readings", "readings", [missing], "must be 0"))
    report.add(Measurement("pipeline: unexpected or duplicated readings", "readings", [extra],
                           "must be 0"))  # fmt: skip
    for name, seconds_cpu in sorted(cpu.items()):
        stage = scaled.parse(name)[0]
        report.add(Measurement(f"pipeline drain: CPU {name}", "µs/message",
                               [per_message_us(seconds_cpu, messages)],
                               "start-up taken off" if stage in STOPPED else ""))  # fmt: skip
    if any(scaled.parse(name)[1] > 1 for name in cpu):
        for stage, seconds_cpu in by_stage(cpu).items():  # several instances: each stage's sum
            report.add(Measurement(f"pipeline drain: CPU {stage}, all instances", "µs/message",
                                   [per_message_us(seconds_cpu, messages)],
                                   "start-up taken off" if stage in STOPPED else ""))  # fmt: skip
    report.add(Measurement("pipeline drain: CPU all processes", "µs/message",
                           [per_message_us(sum(cpu.values()), messages)],
                           f"{sum(cpu.values()) / seconds:.2f} cores busy on average"))  # fmt: skip


def work_done(stage: str, samples: Iterable[PromSample]) -> float:
    """What an instance did: messages received (bridge), processed (processor), readings
    written (sink); 0 when it did not answer."""
    if stage == "sink":
        return readings_written(samples) or 0.0
    name = "f2pipe_bridge_received_total" if stage == "bridge" else (
        "f2pipe_processor_messages_total")  # fmt: skip
    return counter(samples, name) or 0.0


def shares(done: Mapping[str, float]) -> dict[str, float]:
    """Each instance's fraction of its stage's work (`bridge-2` -> 0.48)."""
    totals = by_stage(done)
    return {name: ratio(value, totals[scaled.parse(name)[0]]) for name, value in done.items()}


def add_shares(report: Report, done: Mapping[str, float]) -> None:
    for name, share in shares(done).items():
        report.add(Measurement(f"pipeline: share of {name}", "fraction", [share],
                               "of its stage's messages (sink: readings written)"))  # fmt: skip


def add_drain(report: Report, drain: Drain) -> None:
    report.add(Measurement(f"{drain.label}: messages/s", "messages/s", [drain.rate],
                           f"{drain.messages:,} messages from the first one in"))  # fmt: skip
    for name, cpu in sorted(drain.cpu.items()):
        report.add(Measurement(f"{drain.label} drain: CPU {name}", "µs/message",
                               [per_message_us(cpu, drain.messages)]))  # fmt: skip
    if drain.payload is not None:
        # Mosquitto's max_queued_bytes counts payload bytes per session: the backlog's share.
        report.add(Measurement("backlog: payload per message", "bytes",
                               [drain.payload / drain.messages],
                               f"{drain.payload / 2**20:,.1f} MiB queued per session; "
                               "max_queued_bytes allows 256 MiB"))  # fmt: skip
