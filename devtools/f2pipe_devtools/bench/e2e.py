"""`f2pipe bench e2e`: the whole local stack under the simulator's load; throughput, latency,
per-stage rates, CPU and memory per process, and recovery from kill -9.

Three phases on one `f2pipe dev` stack (fresh state directory, free ports):
1. fixed rate (`--rate`, default 5,000 msg/s): latency from the device timestamp to the
   database commit (the sink's histogram), sustained readings/s;
2. as fast as it goes (no rate limit): the sustained readings/s committed;
3. recovery: a steady rate while, in turn, bridge, processor and sink are killed with SIGKILL,
   Redis is killed with SIGKILL, PostgreSQL is stopped for 20 s and Mosquitto is killed with
   SIGKILL (the dev supervisor restarts each); seconds until the committed rate is back,
   then the database against the simulator's ledger: missing and unexpected readings.

A sampler scrapes every service's /metrics once a second; rates are taken over each phase's
window after its warm-up. The chart (PNG) shows readings/s and p99 latency over time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from f2pipe_devtools.bench.report import Measurement, Report
from f2pipe_devtools.dev.ports import Ports
from f2pipe_devtools.dev.procs import Console
from f2pipe_devtools.dev.stack import DevOptions, DevStack
from f2pipe_devtools.dev.status import fetch, totals
from f2pipe_devtools.servers import free_port
from f2pipe_devtools.testkit.ledger import Row, expected_rows, iter_ledger
from f2pipe_shared.timestamps import to_epoch_us

STAGES = {  # stage -> (service, counter)
    "bridge in": ("bridge", "f2pipe_bridge_received_total"),
    "processor": ("processor", "f2pipe_processor_messages_total"),
    "readings decoded": ("processor", "f2pipe_processor_readings_total"),
    "sink rows": ("sink", "f2pipe_sink_rows_written_total"),
}
LATENCY = "f2pipe_sink_end_to_end_latency_seconds"
KILLED = ("bridge", "processor", "sink")  # their /metrics are sampled
POSTGRES_OUTAGE = 20.0  # seconds


@dataclass(frozen=True)
class Fault:
    """One fault of the recovery phase: `target` is a service or a supervised server."""

    label: str
    target: str
    outage: float = 0.0  # seconds the target stays down on purpose

    def inflict(self, stack: DevStack) -> None:
        if self.target in stack.services:
            pid = stack.services[self.target].pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
        elif self.outage:
            stack.supervised[self.target].stop_for(self.outage)
        else:  # the whole process group: Mosquitto runs under a supervising shell
            pid = stack.supervised[self.target].server.pid
            assert pid is not None
            os.killpg(pid, signal.SIGKILL)


FAULTS = (
    *(Fault(f"{name} kill -9", name) for name in KILLED),
    Fault("redis kill -9", "redis"),
    Fault(f"postgres stopped {POSTGRES_OUTAGE:g} s", "postgres", POSTGRES_OUTAGE),
    Fault("mosquitto kill -9", "mosquitto"),
)


@dataclass
class Tick:
    at: float  # seconds since the bench started
    totals: dict[str, float]  # stage -> counter, made monotonic across restarts
    buckets: dict[float, float]  # latency histogram: upper bound -> cumulative count


@dataclass
class Sampler:
    """Once a second: every stage's counter and the latency histogram, restarts folded in."""

    stack: DevStack
    ticks: list[Tick] = field(default_factory=list)
    marks: list[tuple[float, str]] = field(default_factory=list)
    _raw: dict[str, float] = field(default_factory=dict)  # stage -> last scraped counter
    _base: dict[str, float] = field(default_factory=dict)  # counted before restarts
    _stop: threading.Event = field(default_factory=threading.Event)
    t0: float = field(default_factory=time.monotonic)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def mark(self, label: str) -> None:
        self.marks.append((self.now(), label))

    def sample(self) -> Tick:
        pages = {name: fetch(self.stack.metrics_url(name)) for name in KILLED}
        counters = {name: totals(page) for name, page in pages.items()}
        stage_totals = {}
        for stage, (service, counter) in STAGES.items():
            previous = self._raw.get(stage, 0.0)
            raw = counters[service].get(counter)
            if raw is None:  # not answering (restarting): hold the total
                raw = previous
            elif raw < previous:  # restarted: its counter began again at 0
                self._base[stage] = self._base.get(stage, 0.0) + previous
            self._raw[stage] = raw
            stage_totals[stage] = self._base.get(stage, 0.0) + raw
        buckets = {float(s.labels["le"]): s.value for s in pages["sink"]
                   if s.name == LATENCY + "_bucket"}  # fmt: skip
        tick = Tick(self.now(), stage_totals, buckets)
        self.ticks.append(tick)
        return tick

    def run(self) -> None:
        while not self._stop.wait(1.0):
            self.sample()

    @contextmanager
    def running(self) -> Iterator[Sampler]:
        thread = threading.Thread(target=self.run, name="bench-sampler", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(5)

    def window(self, start: float, end: float) -> tuple[Tick, Tick]:
        inside = [t for t in self.ticks if start <= t.at <= end]
        if len(inside) < 2:
            raise RuntimeError(f"no samples between {start:.0f} s and {end:.0f} s")
        return inside[0], inside[-1]


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The q-quantile of what a cumulative histogram counted between two scrapes.

    Linear inside the bucket, as Prometheus's histogram_quantile; None without counts. A
    histogram that restarted (counts fell) counts from zero.
    """
    bounds = sorted(after)
    if not bounds:
        return None
    restarted = any(after[b] < before.get(b, 0.0) for b in bounds)
    counts = [after[b] - (0.0 if restarted else before.get(b, 0.0)) for b in bounds]
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            share = (rank - below) / (cumulative - below) if cumulative > below else 1.0
            return lower + (bound - lower) * share
        lower, below = bound, cumulative
    return lower


# --- processes ------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (PostgreSQL's backends, Mosquitto under run-broker.sh)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                todo += [int(child) for child in task.read_text().split()]
    return pids


def _proc_stats(pid: int) -> tuple[float, float, float] | None:
    """CPU seconds (user + system) of a process and its descendants, and the largest peak
    and current RSS (MB) among them."""
    cpu, peak, now, seen = 0.0, 0.0, 0.0, False
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{member}/status").read_text()
        except (OSError, IndexError):
            continue
        seen = True
        cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        kb = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
              if line.startswith(("VmHWM:", "VmRSS:"))}  # fmt: skip
        peak = max(peak, kb.get("VmHWM", 0) / 1024)
        now = max(now, kb.get("VmRSS", 0) / 1024)
    return (cpu, peak, now) if seen else None


def process_stats(stack: DevStack) -> dict[str, tuple[float, float, float]]:
    pids = {name: s.pid for name, s in stack.services.items()}
    pids |= {server.name: server.pid for server in stack.servers}
    out = {}
    for name, pid in pids.items():
        if pid is not None and (stats := _proc_stats(pid)) is not None:
            out[name] = stats
    return out


# --- the load -------------------------------------------------------------------------------


def simulator(
    stack: DevStack, ledger: Path, seconds: float | None, rate: float | None, controllers: int,
    *, count: int | None = None,
) -> subprocess.Popen[bytes]:  # fmt: skip
    """The simulator's load mode for `seconds`, or for `count` messages (then it exits once
    the broker acknowledged every one)."""
    env = {**stack.env(), **stack.database_env("simulator"), "METRICS_PORT": str(free_port()),
           "LOG_LEVEL": "WARNING"}  # fmt: skip
    length = ["--count", str(count)] if count is not None else ["--duration", str(seconds)]
    argv = [sys.executable, "-m", "f2pipe", "simulator", "--load", *length,
            "--controllers", str(controllers), "--seed", "1", "--ledger", str(ledger)]  # fmt: skip
    if rate is not None:
        argv += ["--rate", str(rate)]
    log = (ledger.parent / f"{ledger.stem}.log").open("ab")
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def stored_since(stack: DevStack, since_us: int) -> list[Row]:
    with psycopg.connect(stack.conninfo) as conn:
        cursor = conn.execute(
            "SELECT timestamp, device_id, datapoint_id, value FROM telemetry.readings "
            "WHERE timestamp >= to_timestamp(%s / 1e6)", (since_us,))  # fmt: skip
        return [(to_epoch_us(ts), d, p, v) for ts, d, p, v in cursor]


def wait_drained(sampler: Sampler, idle: float = 5.0, timeout: float = 300.0) -> None:
    """Until the sink has written nothing new for ``idle`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = sampler.ticks[-1].totals["sink rows"], time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(1)
        now = sampler.ticks[-1].totals["sink rows"]  # the sampler's thread takes the ticks
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= idle:
            return


# --- phases ---------------------------------------------------------------------------------


@dataclass
class Plan:
    controllers: int = 200
    warmup: float = 15.0
    measure: float = 60.0
    rate: float = 5000.0
    recovery_rate: float = 3000.0
    kill_every: float = 25.0
    readings_per_message: float = 2.8  # replaced by what the fixed-rate phase measured


def throughput_phase(report: Report, stack: DevStack, sampler: Sampler, plan: Plan, *,
                     name: str, rate: float | None, work: Path,
                     label: str | None = None) -> float:  # fmt: skip
    """Load at `rate` msg/s (None: as fast as the simulator goes); the rate that arrived."""
    sampler.mark(f"{name} start")
    sim = simulator(stack, work / f"{name}.jsonl", plan.warmup + plan.measure, rate,
                    plan.controllers)  # fmt: skip
    start = sampler.now() + plan.warmup
    time.sleep(plan.warmup + plan.measure)
    end = sampler.now()
    sim.wait(120)
    wait_drained(sampler)
    first, last = sampler.window(start, end)
    seconds = last.at - first.at
    label = label or ("fixed rate" if rate else "as fast as it goes")
    delivered = last.totals["bridge in"] - first.totals["bridge in"]
    if rate:
        missed_target(report, delivered / seconds, rate, label)
    if rate and delivered > 0:
        plan.readings_per_message = (
            last.totals["sink rows"] - first.totals["sink rows"]
        ) / delivered
    for stage in STAGES:
        unit = "readings/s" if stage in ("readings decoded", "sink rows") else "messages/s"
        per_s = (last.totals[stage] - first.totals[stage]) / seconds
        report.add(Measurement(f"{label}: {stage}", unit, [per_s],
                               f"{seconds:.0f} s after {plan.warmup:.0f} s warm-up"))  # fmt: skip
    for q in (0.5, 0.95, 0.99):
        value = quantile(first.buckets, last.buckets, q)
        if value is not None:
            report.add(Measurement(f"{label}: latency p{round(q * 100)}", "s", [value],
                                   "device timestamp -> database commit"))  # fmt: skip
    return delivered / seconds


MET = 0.95  # of the target rate: below, the fixed-rate phase measured an overloaded stack


def missed_target(
    report: Report, achieved: float, target: float, label: str = "fixed rate"
) -> bool:
    """Record what share of the target rate arrived; say it loudly when it fell short."""
    share = achieved / target
    short = share < MET
    note = (f"MISSED: {achieved:,.0f} of {target:,.0f} msg/s arrived; the latencies are an "
            "overloaded machine's") if short else f"target {target:,.0f} msg/s"  # fmt: skip
    report.add(Measurement(f"{label}: delivered / target", "ratio", [share], note))
    if short:
        print(f"WARNING: the {label} phase missed its target: {note}", file=sys.stderr)
    return short


def recovery_phase(report: Report, stack: DevStack, sampler: Sampler, plan: Plan,
                   work: Path) -> None:  # fmt: skip
    since_us = int(time.time() * 1e6) - 1_000_000
    ledger = work / "recovery.jsonl"
    outages = sum(f.outage for f in FAULTS)
    total = plan.warmup + plan.kill_every * (len(FAULTS) + 1) + outages
    sampler.mark("recovery start")
    sim = simulator(stack, ledger, total, plan.recovery_rate, plan.controllers)
    time.sleep(plan.warmup)
    struck: list[tuple[str, int]] = []  # (fault, wall-clock µs): to say which lost what
    for fault in FAULTS:
        time.sleep(plan.kill_every / 2)
        # The steady rate; not the last seconds' rate, which may still be a catch-up.
        before = plan.recovery_rate * plan.readings_per_message
        steady = _rate(sampler, "sink rows", 5)
        fault.inflict(stack)
        struck.append((fault.label, int(time.time() * 1e6)))
        struck_at = sampler.now()
        sampler.mark(fault.label)
        timeout = plan.kill_every * 2 + fault.outage
        back = _back_to(sampler, before, struck_at, timeout=timeout, stack=stack)
        report.add(Measurement(f"recovery: {fault.label} -> rate back", "s",
                               [back if back is not None else float("nan")],
                               recovery_note(fault.label, before, steady)))  # fmt: skip
        time.sleep(max(0.0, plan.kill_every / 2 + fault.outage - (sampler.now() - struck_at)))
    sim.wait(300)
    sampler.mark("recovery end")
    expected = expected_rows(iter_ledger(ledger)).readings
    deadline = time.monotonic() + 240
    while True:  # until every reading arrived, or long enough to call the rest missing
        stored = stored_since(stack, since_us)
        got = set(stored)
        if expected <= got or time.monotonic() > deadline:
            break
        time.sleep(5)
    time.sleep(3)  # a duplicate would arrive now
    stored = stored_since(stack, since_us)
    got = set(stored)
    report.add(Measurement("recovery: readings in the ledger", "readings", [len(expected)]))
    report.add(Measurement("recovery: missing readings", "readings", [len(expected - got)],
                           "must be 0"))  # fmt: skip
    for label, offsets in missing_by_fault(expected - got, struck).items():
        report.add(Measurement(f"recovery: missing readings near {label}", "readings",
                               [len(offsets)], _offsets_note(offsets)))  # fmt: skip
    extra = len(got - expected) + len(stored) - len(got)
    report.add(Measurement("recovery: unexpected or duplicated readings", "readings", [extra],
                           "must be 0"))  # fmt: skip


NEAR_S = 15.0  # a missing reading this close to a fault is put down to it
NOT_NEAR = "no fault"


def missing_by_fault(
    missing: Iterable[Row], struck: Sequence[tuple[str, int]]
) -> dict[str, list[float]]:
    """Each missing reading put down to the fault nearest its device timestamp (the simulator
    stamps a message as it publishes it), if one was struck within NEAR_S, else to NOT_NEAR:
    fault -> each of its readings' seconds from the fault (negative: published before it).
    A broker crash, say, loses what it acknowledged before it and had not saved."""
    near: dict[str, list[float]] = {}
    for row in missing:
        offsets = [((row[0] - at) / 1e6, label) for label, at in struck]
        offset, label = min(offsets, key=lambda o: abs(o[0]), default=(0.0, NOT_NEAR))
        near.setdefault(label if abs(offset) <= NEAR_S else NOT_NEAR, []).append(offset)
    return near


def _offsets_note(offsets: Sequence[float]) -> str:
    return (
        f"device timestamps {min(offsets):+.1f} s to {max(offsets):+.1f} s from the nearest fault"
    )


def recovery_note(label: str, before: float, steady: float) -> str:
    """What a recovery time is measured against; loud when the stack did not even carry the
    phase's rate before the fault (an overloaded machine: the time then means little)."""
    note = f"sink rows/s back to 90 % of {before:,.0f}"
    if steady >= 0.9 * before:
        return note
    warning = f"MISSED: only {steady:,.0f} rows/s before the fault"
    print(f"WARNING: recovery from {label}: {warning}", file=sys.stderr)
    return f"{warning}; {note}"


def _rate(sampler: Sampler, stage: str, seconds: float) -> float:
    ticks = [t for t in sampler.ticks if t.at >= sampler.now() - seconds]
    if len(ticks) < 2:
        return 0.0
    return (ticks[-1].totals[stage] - ticks[0].totals[stage]) / (ticks[-1].at - ticks[0].at)


def _back_to(
    sampler: Sampler, before: float, killed_at: float, timeout: float, stack: DevStack
) -> float | None:
    """Seconds after the fault until 3 s of sink rows/s are back to 90 % of ``before``.

    Meanwhile whatever died is restarted as `f2pipe dev` does (checked every 0.5 s).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        stack.check()
        if sampler.now() - killed_at >= 3 and _rate(sampler, "sink rows", 3) >= 0.9 * before:
            return sampler.now() - killed_at
    return None


# --- the suite ------------------------------------------------------------------------------


@contextmanager
def bench_stack(
    prefix: str, controllers: int, instances: int = 1, keep_log: Path | None = None
) -> Iterator[tuple[DevStack, Path]]:
    """A fresh `f2pipe dev` stack (free ports, no simulator of its own, ``instances`` of
    bridge, processor and sink each) and its work directory; both gone afterwards, but for
    the stack's console log when `keep_log` names where to keep it (0600: it names devices)."""
    top = Path(tempfile.mkdtemp(prefix=prefix))
    top.chmod(0o755)  # PostgreSQL may run as `postgres`: it must enter it
    console = Console(open(top / "stack.log", "w"))  # noqa: SIM115 - closed with the stack
    stack = DevStack(DevOptions(top / "dev", Ports.free(instances), controllers=controllers,
                                simulator=False, instances=instances), console)  # fmt: skip
    try:
        stack.up()
        yield stack, top
    finally:
        stack.down()
        console.out.close()
        if keep_log is not None:
            keep_log.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(top / "stack.log", keep_log)
            keep_log.chmod(0o600)
        shutil.rmtree(top, ignore_errors=True)


def run(report: Report, repeats: int, min_seconds: float, quick: bool = False,
        out_dir: Path | None = None) -> None:  # fmt: skip
    plan = Plan(warmup=8, measure=20, kill_every=20, controllers=100) if quick else Plan()
    stem = report.started_at.replace(":", "")
    log = out_dir / f"{stem}-e2e-stack.log" if out_dir is not None else None
    with bench_stack("f2pipe-bench-", plan.controllers, keep_log=log) as (stack, top):
        sampler = Sampler(stack)
        with sampler.running():
            throughput_phase(report, stack, sampler, plan, name="fixed", rate=plan.rate, work=top)
            fastest = throughput_phase(report, stack, sampler, plan, name="fastest", rate=None,
                                       work=top)  # fmt: skip
            # The latency target's load: half of what this machine carried just now, load
            # generator included (on two cores it takes a share the pipeline cannot have).
            throughput_phase(report, stack, sampler, plan, name="half", rate=fastest / 2,
                             work=top, label="half capacity")  # fmt: skip
            stats = process_stats(stack)
            recovery_phase(report, stack, sampler, plan, top)
        for name, (cpu, peak, rss) in sorted(stats.items()):
            note = "from start-up through both throughput phases"
            report.add(Measurement(f"process {name}: CPU", "s", [cpu], note))
            report.add(Measurement(f"process {name}: RSS at steady state", "MB", [rss],
                                   "VmRSS after the as-fast-as-it-goes phase"))  # fmt: skip
            report.add(Measurement(f"process {name}: peak RSS", "MB", [peak],
                                   "VmHWM (certgen: during the fleet's enrolment)"))  # fmt: skip
        if out_dir is not None:
            chart(sampler, out_dir / f"{stem}-e2e.png")


def chart(sampler: Sampler, path: Path) -> Path | None:
    """Readings/s committed and p99 latency over time, phases and kills marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no chart: matplotlib is not installed (it is in the dev group: make setup)")
        return None
    ticks = sampler.ticks
    times, rows, p99 = [], [], []
    for before, after in zip(ticks[4::5], ticks[9::5], strict=False):
        seconds = after.at - before.at
        times.append(after.at)
        rows.append((after.totals["sink rows"] - before.totals["sink rows"]) / seconds)
        p99.append(quantile(before.buckets, after.buckets, 0.99))
    fig, ax = plt.subplots(figsize=(11, 5))
    ax.plot(times, rows, color="tab:blue", label="readings/s committed")
    ax.set_xlabel("seconds")
    ax.set_ylabel("readings/s committed")
    right = ax.twinx()
    right.plot(times, [v if v is not None else float("nan") for v in p99], color="tab:red",
               label="p99 latency (s)")  # fmt: skip
    right.set_ylabel("p99 latency, s")
    for at, label in sampler.marks:
        ax.axvline(at, color="grey", linestyle=":", linewidth=0.8)
        ax.annotate(label, (at, 0), rotation=90, fontsize=7, va="bottom")
    fig.legend(loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"chart: {path}")
    return path
