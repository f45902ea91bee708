"""`f2pipe simulator [options]`: simulated controllers, or with --load a load generator.

``build`` is the one place that constructs what the simulator talks to: the enrolment
client (certgen), the MQTT broker's connections, the clock, the ledger, the metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import random
import ssl
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from f2pipe_shared.lifecycle import serve
from f2pipe_shared.logs import configure_logging
from f2pipe_shared.settings import SettingsError
from f2pipe_shared.timestamps import parse_device_timestamp
from f2pipe_shared.topics import normalize_mac
from f2pipe_simulator.clock import LoopClock
from f2pipe_simulator.enrolment import CertgenEnrolment, ClaimCodeError, read_claim_codes
from f2pipe_simulator.identity import StateDir
from f2pipe_simulator.ledger import Ledger
from f2pipe_simulator.load import LoadRun
from f2pipe_simulator.metrics import SimulatorMetrics
from f2pipe_simulator.mqtt import Backoff, BrokerAddress, PahoBroker
from f2pipe_simulator.options import Options, add_arguments
from f2pipe_simulator.registry import load_fleet
from f2pipe_simulator.service import SimulatorService
from f2pipe_simulator.settings import Settings
from f2pipe_simulator.startup import choose_fleet

log = logging.getLogger("f2pipe.simulator")


class NothingToSimulate(Exception):
    """No controller of the registry has a claim code or a certificate here."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="f2pipe simulator",
        description="simulated F2 controllers (enrol, publish, answer commands); --load",
    )
    add_arguments(p)
    return p


def options_from(args: argparse.Namespace, settings: Settings) -> Options:
    """The run's options: the command line, the environment's defaults for what it omits."""
    env, ca = settings.simulator, settings.ca
    if not args.load and any(
        v is not None for v in (args.rate, args.count, args.duration, args.start_time)
    ):
        raise SettingsError("--rate, --count, --duration and --start-time need --load")
    try:
        macs = [normalize_mac(mac) for mac in args.macs] if args.macs else None
    except ValueError as exc:
        raise SettingsError(f"--mac: {exc}") from None
    start_time = None
    if args.start_time:
        try:
            start_time = parse_device_timestamp(args.start_time)
        except ValueError as exc:
            raise SettingsError(f"--start-time: {exc}") from None
    port = settings.metrics_port if args.metrics_port is None else args.metrics_port
    claim_codes = args.claim_codes or (
        Path(env.simulator_claim_codes) if env.simulator_claim_codes else None
    )
    return Options(
        state_dir=args.state_dir or Path(env.simulator_state_dir),
        certgen_url=args.certgen_url
        or env.simulator_certgen_url
        or f"https://{ca.certgen_api_host}:{ca.certgen_api_port}",
        seed=args.seed if args.seed is not None else random.SystemRandom().randrange(2**31),
        claim_codes=claim_codes,
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
        ledger=args.ledger,
        metrics_port=port,
    )


def build(settings: Settings, options: Options) -> SimulatorService:
    """The service and everything it talks to. Reads the claim codes (ClaimCodeError) and
    the registry's fleet (NothingToSimulate when none of it can be simulated)."""
    env, mqtt = settings.simulator, settings.mqtt
    codes = read_claim_codes(options.claim_codes) if options.claim_codes else {}
    state = StateDir(options.state_dir) if mqtt.mqtt_tls else None
    specs = choose_fleet(
        load_fleet(settings.postgres.conninfo, options.macs),
        codes,
        state,
        controllers=options.controllers,
        shard=options.shard,
    )
    if not specs:
        raise NothingToSimulate
    metrics = SimulatorMetrics()
    clock = LoopClock()
    enrolment = None
    contexts = None
    if state is not None:
        enrolment = CertgenEnrolment(
            options.certgen_url,
            state,
            concurrency=env.simulator_enrol_concurrency,
            renew_before=timedelta(days=env.simulator_renew_days),
            on_result=metrics.enrolment,
            verify=certgen_verify(settings, options.certgen_url),
        )
        # The broker's CA: MQTT_CA_FILE when set, otherwise the one certgen returned.
        ca_file = mqtt.mqtt_ca_file if "mqtt_ca_file" in mqtt.model_fields_set else None
        contexts = functools.partial(
            state.client_context, ca_file=Path(ca_file) if ca_file else None
        )
    broker = PahoBroker(
        BrokerAddress(mqtt.mqtt_broker_host, mqtt.mqtt_broker_port, mqtt.mqtt_keepalive),
        contexts=contexts,
        connect_concurrency=env.simulator_connect_concurrency,
        backoff=Backoff(env.simulator_reconnect_min, env.simulator_reconnect_max),
        queue_size=env.simulator_queue_size,
        metrics=metrics,
    )
    load = None
    if options.load:
        load = LoadRun(
            clock=clock,
            rate=options.rate,
            count=options.count,
            duration=options.duration,
            event_share=options.event_share,
            connect_timeout=env.simulator_connect_timeout,
            seed=options.seed,
        )
    return SimulatorService(
        specs,
        codes,
        options=options,
        settings=env,
        enrolment=enrolment,
        broker=broker,
        clock=clock,
        metrics=metrics,
        ledger=Ledger(options.ledger) if options.ledger is not None else None,
        load=load,
    )


def certgen_verify(settings: Settings, url: str) -> ssl.SSLContext | bool:
    """How certgen's certificate is checked over https: against our CA alone, as a device
    checks it (SIMULATOR_CERTGEN_CA_FILE, else MQTT_CA_FILE when set, else CA_DIR/ca.crt)."""
    if not url.lower().startswith("https://"):
        return True  # plain HTTP: nothing to verify
    mqtt = settings.mqtt
    ca_file = settings.simulator.simulator_certgen_ca_file or (
        mqtt.mqtt_ca_file
        if "mqtt_ca_file" in mqtt.model_fields_set
        else str(Path(settings.ca.ca_dir) / "ca.crt")
    )
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"certgen's CA certificate {ca_file}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings.load()
    common = settings.common
    configure_logging("simulator", common.log_level, common.log_format)
    # One line per enrolment request (x1000) says nothing the enrolment summary does not.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    options = options_from(args, settings)
    try:
        service = build(settings, options)
    except ClaimCodeError as exc:
        log.error("claim codes unreadable", extra={"error": str(exc)})
        return 2
    except NothingToSimulate:
        log.error(
            "no controller to simulate: none in the registry with a claim code or certificate",
            extra={"claim_codes": str(options.claim_codes), "state_dir": str(options.state_dir)},
        )
        return 1
    return serve(
        "simulator", service, lambda: asyncio.run(service.run()),
        host=settings.observability.metrics_host, port=options.metrics_port,
        registry=service.metrics.registry, controllers=len(service.specs),
        mode="load" if options.load else "normal", seed=options.seed,
    )  # fmt: skip
