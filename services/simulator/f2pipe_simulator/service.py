"""`f2pipe simulator`: simulated F2 Smart Controllers, and the load generator.

Start-up: settings; the fleet from the registry (controllers, connectors, pins, templates);
claim codes; enrolment through certgen (keys stay in the state directory, certificates are
reused); then one asyncio loop runs every controller's MQTT connection and behaviour until
SIGTERM (normal mode) or until the load run is done (``--load``). On the way out it waits a
little for outstanding acknowledgements, disconnects every controller and closes the ledger
with a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import random
import resource
import ssl
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from f2pipe_shared import settings as s
from f2pipe_shared.logs import configure_logging
from f2pipe_shared.observability import ObservabilityServer, on_shutdown_signal
from f2pipe_shared.timestamps import format_device_timestamp, parse_device_timestamp, to_epoch_us
from f2pipe_shared.topics import device_cn, normalize_mac
from f2pipe_simulator import metrics
from f2pipe_simulator.controller import Controller, Message, Stamper
from f2pipe_simulator.enrolment import ClaimCodeError, enrol_all, read_claim_codes
from f2pipe_simulator.identity import StateDir
from f2pipe_simulator.ledger import Ledger
from f2pipe_simulator.mqtt import Backoff, Connection, Endpoint
from f2pipe_simulator.registry import ControllerSpec, load_fleet
from f2pipe_simulator.settings import Settings, SimulatorSettings

log = logging.getLogger("f2pipe.simulator")

DEFAULT_METRICS_PORT = 9104
LOAD_BATCH = 500  # messages generated between two turns of the event loop
LOAD_DRAIN_SECONDS = 120.0


@dataclass(frozen=True)
class Options:
    """Everything a run needs, from the command line and the environment."""

    conninfo: str
    state_dir: Path
    claim_codes: Path | None
    certgen_url: str
    controllers: int | None
    shard: tuple[int, int] | None
    macs: list[str] | None
    enrol_only: bool
    load: bool
    rate: float | None
    count: int | None
    duration: float | None
    event_share: float
    start_time: datetime | None
    seed: int
    ledger: Path | None
    publish_interval: float
    mqtt: s.MqttSettings
    env: SimulatorSettings
    metrics_host: str
    metrics_port: int

    @property
    def tls(self) -> bool:
        return self.mqtt.mqtt_tls


def options_from(args: argparse.Namespace) -> Options:
    settings = Settings.load()
    env, obs, ca = settings.simulator, settings.observability, settings.ca
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    claim_codes = args.claim_codes or (
        Path(env.simulator_claim_codes) if env.simulator_claim_codes else None
    )
    if not args.load and any(
        v is not None for v in (args.rate, args.count, args.duration, args.start_time)
    ):
        raise s.SettingsError("--rate, --count, --duration and --start-time need --load")
    try:
        macs = [normalize_mac(mac) for mac in args.macs] if args.macs else None
    except ValueError as exc:
        raise s.SettingsError(f"--mac: {exc}") from None
    start_time = None
    if args.start_time:
        try:
            start_time = parse_device_timestamp(args.start_time)
        except ValueError as exc:
            raise s.SettingsError(f"--start-time: {exc}") from None
    if args.metrics_port is not None:
        port = args.metrics_port
    else:
        port = DEFAULT_METRICS_PORT if obs.metrics_port is None else obs.metrics_port
    return Options(
        conninfo=settings.postgres.conninfo,
        state_dir=args.state_dir or Path(env.simulator_state_dir),
        claim_codes=claim_codes,
        certgen_url=args.certgen_url
        or env.simulator_certgen_url
        or f"http://{ca.certgen_api_host}:{ca.certgen_api_port}",
        controllers=args.controllers,
        shard=args.shard,
        macs=macs,
        enrol_only=args.enrol_only,
        load=args.load,
        rate=args.rate,
        count=args.count,
        duration=args.duration,
        event_share=args.event_share,
        start_time=start_time,
        seed=seed,
        ledger=args.ledger,
        publish_interval=env.publish_interval,
        mqtt=settings.mqtt,
        env=env,
        metrics_host=obs.metrics_host,
        metrics_port=port,
    )


def main(args: argparse.Namespace) -> int:
    common = s.load(s.CommonSettings)
    configure_logging("simulator", common.log_level, common.log_format)
    # One line per enrolment request (x1000) says nothing the enrolment summary does not.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    options = options_from(args)
    try:
        codes = read_claim_codes(options.claim_codes) if options.claim_codes else {}
    except ClaimCodeError as exc:
        log.error("claim codes unreadable", extra={"error": str(exc)})
        return 2
    fleet = choose_fleet(options, codes)
    if not fleet:
        log.error(
            "no controller to simulate: none in the registry with a claim code or certificate",
            extra={"claim_codes": str(options.claim_codes), "state_dir": str(options.state_dir)},
        )
        return 1
    simulator = Simulator(options, fleet, codes)
    server = ObservabilityServer(options.metrics_host, options.metrics_port, simulator.health)
    server.start()
    on_shutdown_signal(simulator.request_stop)
    log.info(
        "simulator starting",
        extra={
            "controllers": len(fleet),
            "mode": "load" if options.load else "normal",
            "seed": options.seed,
            "metrics_port": server.port,
        },
    )
    try:
        return asyncio.run(simulator.run())
    finally:
        server.stop()


def choose_fleet(options: Options, codes: dict[str, str]) -> list[ControllerSpec]:
    """The registry's controllers this run can simulate, in MAC order."""
    fleet = load_fleet(options.conninfo, options.macs)
    if options.tls:
        state = StateDir(options.state_dir)
        fleet = [c for c in fleet if c.mac in codes or state.files(device_cn(c.mac)).cert.exists()]
    if options.controllers:
        fleet = fleet[: options.controllers]
    if options.shard:
        k, n = options.shard
        fleet = fleet[k - 1 :: n]
    return fleet


class _ControllerSink:
    """What a controller publishes goes through the simulator to its connection."""

    __slots__ = ("connection", "simulator")

    def __init__(self, simulator: Simulator, connection: Connection) -> None:
        self.simulator = simulator
        self.connection = connection

    def publish(self, message: Message) -> bool:
        return self.simulator.send(self.connection, message, drop_when_full=True)


class Simulator:
    def __init__(
        self, options: Options, fleet: list[ControllerSpec], codes: dict[str, str]
    ) -> None:
        self.options = options
        self.fleet = fleet
        self.codes = codes
        self.phase = "starting"
        self.state = StateDir(options.state_dir)
        self.connections: list[Connection] = []
        self.controllers: dict[str, Controller] = {}  # by CN
        self.ledger: Ledger | None = None
        self.acked: Counter[str] = Counter()
        self.refused = 0
        self.dropped = 0
        self._seq = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = False
        self._heartbeat = time.monotonic()
        self._started = time.monotonic()
        self._load_stats: dict[str, Any] = {}

    # --- control -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        """From the signal handler: ask the loop to stop (a second signal exits at once)."""
        self._stop_requested = True
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def health(self) -> tuple[bool, dict[str, Any]]:
        connected = sum(1 for c in self.connections if c.connected)
        alive = time.monotonic() - self._heartbeat < 10
        details = {
            "phase": self.phase,
            "controllers": len(self.fleet),
            "running": len(self.connections),
            "connected": connected,
            "messages": sum(self.acked.values()),
        }
        return self.phase == "running" and alive, details

    # --- the run -----------------------------------------------------------------------------

    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        metrics.prepare()
        enrolment = asyncio.create_task(self._enrol())
        stopped = asyncio.create_task(self._stop.wait())
        await asyncio.wait({enrolment, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not enrolment.done():  # SIGTERM while enrolling: keys and certificates so far stay
            enrolment.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await enrolment
            log.info("stopped during enrolment")
            return 0
        ready = enrolment.result()
        if self.options.enrol_only:
            return 0 if len(ready) == len(self.fleet) else 1
        if not ready:
            log.error("no controller could be enrolled")
            return 1
        self._open(ready)
        tasks = [asyncio.create_task(c.run(), name=c.cn) for c in self.connections]
        ticker = asyncio.create_task(self._tick())
        self.phase = "running"
        status = 0
        try:
            if self.options.load:
                status = await self._run_load()
            else:
                for controller in self.controllers.values():
                    controller.start()
                await self._wait_connected(None)
                await self._stop.wait()
        finally:
            self.phase = "stopping"
            for controller in self.controllers.values():
                controller.stop()
            drain = LOAD_DRAIN_SECONDS if self.options.load and not self._stop.is_set() else None
            unacked = await self._drain(drain or self.options.env.simulator_drain_seconds)
            await asyncio.gather(*(c.disconnect() for c in self.connections))
            ticker.cancel()
            await asyncio.gather(*tasks, ticker, return_exceptions=True)
            self._finish(unacked)
        if unacked:
            status = status or (1 if self.options.load else 0)
        return status

    async def _enrol(self) -> list[ControllerSpec]:
        if not self.options.tls:
            log.warning("MQTT_TLS=false: no enrolment, plain MQTT (test brokers only)")
            return self.fleet
        self.phase = "enrolling"
        self.state.create()
        env = self.options.env
        report = await enrol_all(
            [c.mac for c in self.fleet],
            self.codes,
            self.state,
            self.options.certgen_url,
            concurrency=env.simulator_enrol_concurrency,
            renew_before=timedelta(days=env.simulator_renew_days),
            on_result=lambda result: metrics.ENROLMENTS.labels(result).inc(),
        )
        log.info(
            "enrolment done",
            extra={
                "enrolled": len(report.enrolled),
                "reused": len(report.reused),
                "failed": len(report.failed),
                "seconds": round(report.seconds, 2),
                "reasons": dict(Counter(report.failed.values())),
            },
        )
        ready = set(report.ready)
        return [c for c in self.fleet if c.mac in ready]

    def _tls_context(self, cn: str) -> ssl.SSLContext | None:
        if not self.options.tls:
            return None
        mqtt = self.options.mqtt
        ca_file = mqtt.mqtt_ca_file if "mqtt_ca_file" in mqtt.model_fields_set else None
        context = ssl.create_default_context(cafile=ca_file or str(self.state.ca_file))
        files = self.state.files(cn)
        context.load_cert_chain(files.cert, files.key)
        return context

    def _open(self, ready: list[ControllerSpec]) -> None:
        options, env = self.options, self.options.env
        self.phase = "connecting"
        endpoint = Endpoint(
            options.mqtt.mqtt_broker_host,
            options.mqtt.mqtt_broker_port,
            options.mqtt.mqtt_keepalive,
        )
        gate = asyncio.Semaphore(env.simulator_connect_concurrency)
        backoff = Backoff(env.simulator_reconnect_min, env.simulator_reconnect_max)
        if options.ledger is not None:
            self.ledger = Ledger(options.ledger)
            self.ledger.header(
                ready,
                mode="load" if options.load else "normal",
                seed=options.seed,
                publish_interval=options.publish_interval,
                started_at=format_device_timestamp(datetime.now(UTC)),
                start_time=None
                if options.start_time is None
                else format_device_timestamp(options.start_time),
                event_share=options.event_share if options.load else None,
            )
        start_us = None if options.start_time is None else to_epoch_us(options.start_time)
        step_us = round(options.publish_interval * 1_000_000)
        t0 = time.time() if options.start_time is None else options.start_time.timestamp()
        for spec in ready:
            connection = Connection(
                spec.cn,
                endpoint,
                self._tls_context(spec.cn),
                gate=gate,
                backoff=backoff,
                queue_size=env.simulator_queue_size,
                on_command=self._on_command,
                on_ack=self._on_ack,
            )
            self.connections.append(connection)
            self.controllers[spec.cn] = Controller(
                spec,
                sink=_ControllerSink(self, connection),
                timers=asyncio.get_running_loop(),
                stamper=Stamper(_now_us, start_us=start_us, step_us=step_us),
                rng=random.Random(f"{options.seed}/{spec.mac}"),
                publish_interval=options.publish_interval,
                event_interval=env.simulator_event_interval,
                t0=t0,
            )
        metrics.CONTROLLERS.set(len(self.connections))

    async def _tick(self) -> None:
        """Keepalives, the ledger's flush, the health heartbeat: once a second; and every
        ten seconds one line about controllers that cannot connect (not one per attempt)."""
        for second in itertools.count(1):
            self._heartbeat = time.monotonic()
            for connection in self.connections:
                connection.misc()
            if self.ledger is not None:
                self.ledger.flush()
            if second % 10 == 0:
                failing = Counter(
                    c.last_error for c in self.connections if not c.connected and c.last_error
                )
                if failing:
                    log.warning(
                        "controllers not connected",
                        extra={
                            "connected": sum(1 for c in self.connections if c.connected),
                            "controllers": len(self.connections),
                            "last_errors": dict(failing),
                        },
                    )
            await asyncio.sleep(1.0)

    async def _drain(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for outstanding acknowledgements; return those left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while loop.time() < deadline:
            outstanding = sum(c.outstanding for c in self.connections)
            if not outstanding:
                return 0
            await asyncio.sleep(0.05)
        return sum(c.outstanding for c in self.connections)

    def _finish(self, unacked: int) -> None:
        seconds = time.monotonic() - self._started
        total = sum(self.acked.values())
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        summary = {
            "controllers": len(self.connections),
            "acknowledged": total,
            "unacknowledged": unacked,
            "refused": self.refused,
            "dropped": self.dropped,
            "seconds": round(seconds, 3),
            "peak_rss_mb": round(peak_rss_mb, 1),
        }
        log.info("simulator stopped", extra={**summary, "published": dict(self.acked)})
        if self.ledger is not None:
            self.ledger.summary(**summary, **self._load_stats)
            self.ledger.close()

    # --- messages ----------------------------------------------------------------------------

    def send(self, connection: Connection, message: Message, *, drop_when_full: bool) -> bool:
        """Publish through ``connection``; False (and counted as dropped) if its queue is full."""
        if connection.publish(message):
            message.seq = next(self._seq)  # the order messages were handed to MQTT
            return True
        if drop_when_full:
            self.dropped += 1
            metrics.DROPPED.labels(message.kind.value).inc()
        return False

    def _on_ack(self, message: Message, ok: bool) -> None:
        if not ok:
            self.refused += 1
            metrics.REFUSED.labels(message.kind.value).inc()
            log.warning("broker refused a message", extra={"topic": message.topic})
            return
        self.acked[message.kind.value] += 1
        metrics.PUBLISHED.labels(message.kind.value).inc()
        metrics.READINGS.inc(len(message.readings))
        if self.ledger is not None:
            self.ledger.published(message)

    def _on_command(self, connection: Connection, topic: str, payload: bytes) -> None:
        controller = self.controllers[connection.cn]
        try:
            outcome = controller.handle_command(topic, payload)
        except Exception:  # a bug must not take paho's read loop (and the connection) down
            log.exception("command failed", extra={"cn": connection.cn, "topic": topic})
            metrics.COMMANDS.labels("unknown", "error").inc()
            return
        metrics.COMMANDS.labels(outcome.kind, outcome.result).inc()
        if outcome.result == "signalled":
            metrics.READER_SIGNALS.labels(outcome.detail).inc()
        if self.ledger is not None:
            self.ledger.command(controller.mac, topic, payload, outcome)
        log.info(
            "command",
            extra={
                "cn": connection.cn,
                "topic": topic,
                "result": outcome.result,
                "detail": outcome.detail,
            },
        )

    # --- load mode ---------------------------------------------------------------------------

    async def _run_load(self) -> int:
        """Publish the deterministic stream: message k comes from controller k mod n."""
        assert self._stop is not None
        options = self.options
        await self._wait_connected(options.env.simulator_connect_timeout)
        publishers = [
            (controller, connection)
            for connection in self.connections
            if (controller := self.controllers[connection.cn]).publishes
        ]
        if not publishers:
            log.error("load mode: no controller has anything to publish")
            return 1
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        rate, count, duration = options.rate, options.count, options.duration
        log.info(
            "load run started",
            extra={"rate": rate, "count": count, "duration": duration, "seed": options.seed},
        )
        while not self._stop.is_set():
            elapsed = loop.time() - start
            if (count is not None and sent >= count) or (
                duration is not None and elapsed >= duration
            ):
                break
            budget = LOAD_BATCH
            if rate is not None:
                budget = min(budget, int(elapsed * rate) + 1 - sent)
                if budget <= 0:
                    await asyncio.sleep(min(0.01, (sent + 1) / rate - elapsed))
                    continue
            if count is not None:
                budget = min(budget, count - sent)
            for _ in range(budget):
                controller, connection = publishers[sent % len(publishers)]
                message = controller.load_message(options.event_share)
                assert message is not None
                while not self.send(connection, message, drop_when_full=False):
                    # This controller's queue is full: wait for acknowledgements (backpressure).
                    if self._stop.is_set():
                        break
                    await asyncio.sleep(0.002)
                else:
                    sent += 1
            await asyncio.sleep(0)
        seconds = loop.time() - start
        self._load_stats = {
            "load_sent": sent,
            "load_seconds": round(seconds, 3),
            "load_rate": round(sent / seconds, 1) if seconds > 0 else None,
        }
        log.info("load run generated", extra=self._load_stats)
        return 0

    async def _wait_connected(self, limit: float | None) -> None:
        assert self._stop is not None
        started = time.monotonic()
        stop = self._stop

        async def everyone() -> None:
            await asyncio.gather(*(c.ever_connected.wait() for c in self.connections))

        waiting = asyncio.create_task(everyone())
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait(
            {waiting, stopped}, timeout=limit, return_when=asyncio.FIRST_COMPLETED
        )
        stopped.cancel()
        if waiting in done:
            log.info(
                "every controller connected",
                extra={
                    "controllers": len(self.connections),
                    "seconds": round(time.monotonic() - started, 2),
                },
            )
            return
        waiting.cancel()
        if not stop.is_set():
            connected = sum(1 for c in self.connections if c.ever_connected.is_set())
            log.warning(
                "not every controller connected in time; load run starting anyway",
                extra={"connected": connected, "controllers": len(self.connections)},
            )


def _now_us() -> int:
    return time.time_ns() // 1000
