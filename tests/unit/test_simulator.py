"""The simulator's parts without servers: values and frames, behaviour, commands, state, and
the service itself on fakes of what it talks to (broker, enrolment, clock)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import random
import socket
import ssl
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from f2pipe.seed import CONNECTOR_MODES, DATAPOINTS, DEVICE_TEMPLATES, LAYOUT, claim_codes_csv
from f2pipe_devtools.testkit.ledger import read_ledger
from f2pipe_shared.decoding import (
    ByteOrder,
    DecodingSpec,
    Encoding,
    compile_template,
    encode_value,
    modbus_data,
    parse_hex_frame,
)
from f2pipe_shared.payloads import SensorFrame, parse_payload
from f2pipe_shared.registry import Datapoint, Template, templates_from_rows
from f2pipe_shared.timestamps import parse_device_timestamp, to_epoch_us
from f2pipe_shared.topics import ComponentKind, parse_topic
from f2pipe_simulator.controller import Controller, Message, Stamper
from f2pipe_simulator.enrolment import (
    ClaimCodeError,
    EnrolmentReport,
    enrol_all,
    read_claim_codes,
)
from f2pipe_simulator.fleet import RunningFleet
from f2pipe_simulator.identity import StateDir
from f2pipe_simulator.ledger import Ledger
from f2pipe_simulator.load import LoadRun
from f2pipe_simulator.metrics import SimulatorMetrics
from f2pipe_simulator.mqtt import Backoff, DeviceClient
from f2pipe_simulator.options import Options
from f2pipe_simulator.ports import AckHandler, CommandHandler
from f2pipe_simulator.registry import ControllerSpec, assemble_fleet
from f2pipe_simulator.sensors import SensorModel, encodable_range, profile_for, quantize
from f2pipe_simulator.service import SimulatorService
from f2pipe_simulator.settings import SimulatorSettings
from f2pipe_simulator.startup import choose_fleet

MAC = "aabbccddee01"

# --- the demo fleet, as the registry would return it ---------------------------------------------


def demo_templates() -> dict[int, Template]:
    """The seed's templates and datapoints, through the same row parser as the database's."""
    ids = {t["key"]: i for i, t in enumerate(DEVICE_TEMPLATES, start=1)}
    rows: list[tuple[Any, ...]] = []
    for template in DEVICE_TEMPLATES:
        head = (
            ids[template["key"]],
            template["key"],
            template.get("frame_format"),
            template.get("verify_crc", False),
            template.get("modbus_address"),
            template.get("modbus_function"),
            template.get("modbus_register_count"),
        )
        points = [p for p in DATAPOINTS if p["template_key"] == template["key"]]
        if not points:
            rows.append((*head, *([None] * 11)))
        for n, p in enumerate(points, start=1):
            rows.append(
                (
                    *head,
                    100 * ids[template["key"]] + n,
                    p["key"],
                    p.get("unit"),
                    p.get("offset"),
                    p.get("length"),
                    p.get("encoding"),
                    p.get("byte_order", "big"),
                    p.get("decimals"),
                    p.get("field"),
                    p.get("chart_min"),
                    p.get("chart_max"),
                )
            )
    return templates_from_rows(rows)


TEMPLATES = demo_templates()
BY_KEY = {t.key: t for t in TEMPLATES.values()}


def demo_controller(mac: str = MAC) -> ControllerSpec:
    connectors = [(mac, name, mode) for name, mode in CONNECTOR_MODES.items()]
    pins = [
        (
            mac,
            slot.connector,
            CONNECTOR_MODES[slot.connector],
            slot.component,
            n,
            BY_KEY[slot.template_key].id,
        )
        for n, slot in enumerate(LAYOUT, start=1)
    ]
    return assemble_fleet([mac], connectors, pins, TEMPLATES)[0]


# --- a fake clock ------------------------------------------------------------------------------


@dataclass(order=True)
class FakeHandle:
    when: float
    seq: int
    callback: Callable[[], object] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class FakeTimers:
    def __init__(self) -> None:
        self.now = 1000.0
        self.heap: list[FakeHandle] = []
        self.seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> FakeHandle:
        handle = FakeHandle(when, next(self.seq), callback)
        heapq.heappush(self.heap, handle)
        return handle

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        while self.heap and self.heap[0].when <= target:
            handle = heapq.heappop(self.heap)
            if not handle.cancelled:
                self.now = max(self.now, handle.when)
                handle.callback()
        self.now = target


class ListOutlet:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def publish(self, message: Message) -> bool:
        self.messages.append(message)
        return True


def make_controller(
    timers: FakeTimers | None = None,
    *,
    seed: int = 1,
    start_us: int | None = None,
    publish_interval: float = 30.0,
    event_interval: float = 300.0,
) -> tuple[Controller, ListOutlet, FakeTimers]:
    timers = timers or FakeTimers()
    outlet = ListOutlet()
    fake = timers

    def clock() -> int:  # the device's wall clock follows the fake time
        return int((1_700_000_000 + fake.now) * 1e6)

    controller = Controller(
        demo_controller(),
        outlet=outlet,
        timers=timers,
        stamper=Stamper(clock, start_us=start_us, step_us=int(publish_interval * 1e6)),
        rng=random.Random(f"{seed}/{MAC}"),
        publish_interval=publish_interval,
        event_interval=event_interval,
    )
    return controller, outlet, timers


def decode_frame(message: Message) -> dict[str, float]:
    """What the pipeline decodes from a sensor message: shared decoder, template's specs."""
    template = message.component.template
    assert template is not None
    frame = SensorFrame.model_validate_json(message.payload).frame()
    specs = [dp.spec for dp in template.frame_points if dp.spec is not None]
    values = compile_template(specs)(modbus_data(frame, verify_crc=True))
    return dict(zip([dp.key for dp in template.frame_points], values, strict=True))


# --- fleet from the registry --------------------------------------------------------------------


def test_demo_templates_read_like_the_database_has_them() -> None:
    env = BY_KEY["environmental-sensor-v1"]
    assert [dp.key for dp in env.frame_points] == ["temperature", "humidity", "co2"]
    assert env.data_length == 6  # three registers
    power = BY_KEY["power-monitor-v1"]
    assert power.data_length == 12
    assert all(
        dp.spec and dp.spec.byte_order is ByteOrder.WORD_SWAPPED for dp in power.frame_points
    )
    door = BY_KEY["door-sensor-pair-v1"]
    assert [dp.field for dp in door.field_points] == ["door-sensor-1", "door-sensor-2"]
    assert door.frame_points == ()


def test_fleet_skips_pins_outside_the_topic_grammar_and_sensors_without_frames() -> None:
    connectors = [(MAC, "J1", "access-control-mode"), (MAC, "J3", "sensor-mode")]
    pins = [
        (MAC, "J1", "access-control-mode", "reader-3", 1, None),  # the grammar stops at 2
        (MAC, "J3", "sensor-mode", "sensor-1", 2, None),  # no template: nothing to encode
        (MAC, "J3", "sensor-mode", "sensor-2", 3, BY_KEY["environmental-sensor-v1"].id),
    ]
    (spec,) = assemble_fleet([MAC], connectors, pins, TEMPLATES)
    assert [(c.connector, c.name) for c in spec.components] == [("J3", "sensor-2")]
    assert spec.connectors == {"J1": "access-control-mode", "J3": "sensor-mode"}


# --- values and frames --------------------------------------------------------------------------


def test_every_frame_is_valid_modbus_and_decodes_to_the_recorded_values() -> None:
    controller, _, _ = make_controller()
    assert len(controller.sensors) == 5
    for _ in range(200):
        for sensor in controller.sensors:
            message = controller.sensor_message(sensor)
            assert decode_frame(message) == message.readings
            payload = parse_payload(parse_topic(message.topic), message.payload)
            assert isinstance(payload, SensorFrame)
            assert payload.timestamp == parse_device_timestamp(message.timestamp)


def test_values_stay_plausible_and_move_smoothly() -> None:
    model = SensorModel(BY_KEY["environmental-sensor-v1"], random.Random(7))
    power = SensorModel(BY_KEY["power-monitor-v1"], random.Random(7))
    env_series = [model.reading(30.0)[1] for _ in range(3000)]  # 25 hours
    power_series = [power.reading(30.0)[1] for _ in range(3000)]
    bands = {
        "temperature": (18, 30, 1.0),  # low, high, largest step in 30 s
        "humidity": (25, 70, 4.0),
        "co2": (400, 1500, 100.0),
        "voltage": (225, 235, 1.5),
        "current": (0.5, 16, 2.0),
    }
    for key, (low, high, step) in bands.items():
        series = [r[key] for r in (env_series if key in env_series[0] else power_series)]
        assert low <= min(series), key
        assert max(series) <= high, key
        assert max(abs(b - a) for a, b in itertools.pairwise(series)) < step, key
        assert max(series) - min(series) > (high - low) / 10, f"{key} hardly moves"
    for r in power_series:  # a meter's three values agree: P = V x I x power factor
        assert 0.84 <= r["power"] / (r["voltage"] * r["current"]) <= 1.0


@given(
    encoding=st.sampled_from(list(Encoding)),
    order=st.sampled_from(list(ByteOrder)),
    decimals=st.integers(0, 4),
    fraction=st.floats(0, 1),
)
def test_quantize_is_exactly_what_the_decoder_reads_back(
    encoding: Encoding, order: ByteOrder, decimals: int, fraction: float
) -> None:
    if order is ByteOrder.WORD_SWAPPED and encoding not in (
        Encoding.INT32,
        Encoding.UINT32,
        Encoding.FLOAT32,
    ):
        order = ByteOrder.BIG
    spec = DecodingSpec(offset=0, encoding=encoding, byte_order=order, decimals=decimals)
    low, high = encodable_range(spec)
    value = low + (high - low) * fraction
    decoded = compile_template([spec])(encode_value(spec, value))[0]
    assert decoded == quantize(spec, value)


def test_unknown_datapoints_move_inside_their_chart_range_and_what_the_encoding_holds() -> None:
    charted = Datapoint(
        1, "lux", "lx", DecodingSpec(offset=0, encoding="uint16"), chart_min=0, chart_max=1000
    )
    profile = profile_for(charted)
    assert (profile.low, profile.high) == (250, 750)
    tiny = Datapoint(2, "temperature", "°C", DecodingSpec(offset=0, encoding="uint8", decimals=2))
    profile = profile_for(tiny)  # 18-30 degC cannot be sent as uint8 / 100: fit into 0-2.55
    assert 0 <= profile.low < profile.high <= 2.55


# --- behaviour over time ------------------------------------------------------------------------


def test_sensors_publish_every_interval_with_rising_timestamps() -> None:
    controller, outlet, timers = make_controller(event_interval=1e9)
    controller.start()
    timers.advance(30 * 10 + 0.001)
    per_topic: dict[str, list[str]] = {}
    for message in outlet.messages:
        per_topic.setdefault(message.topic, []).append(message.timestamp)
    assert len(per_topic) == 5
    assert all(len(stamps) == 10 for stamps in per_topic.values())
    assert all(stamps == sorted(set(stamps)) for stamps in per_topic.values())
    controller.stop()
    timers.advance(300)
    assert len(outlet.messages) == 50


def test_doors_buttons_readers_and_motion_change_state_at_random_times() -> None:
    controller, outlet, timers = make_controller(publish_interval=1e9, event_interval=60)
    controller.start()
    timers.advance(6 * 3600)
    kinds = {m.kind for m in outlet.messages}
    assert kinds == {
        ComponentKind.DOOR_SENSORS,
        ComponentKind.EXIT_BUTTONS,
        ComponentKind.READER,
        ComponentKind.MOTION_SENSOR,
    }
    for message in outlet.messages:  # every payload is what the pipeline accepts
        parse_payload(parse_topic(message.topic), message.payload)
    doors = [m for m in outlet.messages if m.kind is ComponentKind.DOOR_SENSORS]
    assert doors[0].state == {"door-sensor-1": True, "door-sensor-2": False} or doors[0].state == {
        "door-sensor-1": False,
        "door-sensor-2": True,
    }
    # A door that opened closes again: states alternate open / closed.
    opened = [any(m.state.values()) for m in doors if m.state is not None]
    assert opened[::2] == [True] * len(opened[::2])
    assert not any(opened[1::2])
    assert doors[0].readings == {k: 1.0 if v else 0.0 for k, v in (doors[0].state or {}).items()}
    scans = [m for m in outlet.messages if m.kind is ComponentKind.READER]
    assert all(m.data and len(m.data) <= 1023 for m in scans)
    assert len({m.data for m in scans}) < len(scans)  # the same badges come back
    # A door stays open for seconds (now and then a few minutes), then closes.
    times = [to_epoch_us(parse_device_timestamp(m.timestamp)) / 1e6 for m in doors]
    open_for = [close - open_ for open_, close in zip(times[::2], times[1::2], strict=False)]
    assert len(open_for) > 10
    assert all(2 < seconds <= 180 for seconds in open_for)


def test_the_load_stream_repeats_exactly_with_the_same_seed_and_start_time() -> None:
    start = to_epoch_us(datetime(2024, 5, 1, tzinfo=UTC))

    def stream(seed: int) -> list[tuple[str, bytes]]:
        controller, _, _ = make_controller(seed=seed, start_us=start)
        messages = [controller.load_message(0.2) for _ in range(500)]
        return [(m.topic, m.payload) for m in messages if m is not None]

    first = stream(5)
    assert first == stream(5)
    assert first != stream(6)
    kinds = {parse_topic(topic).component_kind for topic, _ in first}
    assert ComponentKind.SENSOR in kinds
    assert len(kinds) > 2
    # Virtual clock: the n-th message of a topic is stamped start + n x interval.
    sensor_1 = [p for t, p in first if t.endswith("J3/sensor-1")]
    assert json.loads(sensor_1[1])["timestamp"] == "2024-05-01 00:00:30.000000"


# --- commands ------------------------------------------------------------------------------------


def cmnd(component: str, connector: str = "J1", mode: str = "access-control-mode") -> str:
    return f"cmnd/f2-{MAC}/{mode}/{connector}/{component}"


def answers(outlet: ListOutlet) -> list[tuple[str, bool]]:
    out = []
    for message in outlet.messages:
        assert message.state is not None
        out.append((message.topic.split("/", 4)[4], message.state["status"]))
    return out


def test_strike_commands_power_unpower_toggle_and_report() -> None:
    controller, outlet, timers = make_controller()
    strike = cmnd("strike-1")
    assert controller.handle_command(strike, b'{"power-flag":1}').result == "answered"
    assert controller.handle_command(strike, b'{"power-flag":0}').result == "answered"
    assert controller.handle_command(strike, b"").result == "reported"
    outcome = controller.handle_command(strike, b'{"power-flag":2,"period":5}')
    assert (outcome.result, outcome.answers) == ("answered", 1)
    assert answers(outlet) == [
        ("strike-1", True),
        ("strike-1", False),
        ("strike-1", False),
        ("strike-1", True),
    ]
    timers.advance(4.9)
    assert len(outlet.messages) == 4
    timers.advance(0.2)  # period over: back to unpowered
    assert answers(outlet)[-1] == ("strike-1", False)
    assert controller.handle_command(strike, b"").result == "reported"
    assert answers(outlet)[-1] == ("strike-1", False)
    assert outlet.messages[0].topic == f"stat/f2-{MAC}/access-control-mode/J1/strike-1"
    assert outlet.messages[0].readings == {"status": 1.0}  # the strike on J1 has a template
    assert outlet.messages[0].component.device_id is not None


def test_a_new_strike_command_cancels_the_pending_revert() -> None:
    controller, outlet, timers = make_controller()
    controller.handle_command(cmnd("strike-1"), b'{"power-flag":2,"period":5}')
    controller.handle_command(cmnd("strike-1"), b'{"power-flag":1}')
    timers.advance(10)
    assert answers(outlet) == [("strike-1", True), ("strike-1", True)]


def test_strike_without_a_pin_still_answers_but_maps_to_no_device() -> None:
    controller, outlet, _ = make_controller()
    controller.handle_command(cmnd("strike-2"), b'{"power-flag":1}')
    (message,) = [m for m in outlet.messages if m.topic.endswith("strike-2")]
    assert message.component.device_id is None
    assert message.readings == {}


def test_siren_on_off_and_report() -> None:
    controller, outlet, _ = make_controller()
    siren = cmnd("siren-1", "J2", "alarm-mode")
    for payload in (b"1", b"", b"0", b""):
        controller.handle_command(siren, payload)
    assert answers(outlet) == [("siren-1", v) for v in (True, True, False, False)]


def test_reader_success_signals_light_feedback_without_an_answer() -> None:
    controller, outlet, _ = make_controller()
    topic = cmnd("reader-1") + "/success"
    details = [controller.handle_command(topic, str(n).encode()).detail for n in (1, 2, 3)]
    assert details == ["success", "fail_1", "fail_2"]
    assert controller.reader_signals[("J1", "reader-1")] == 3
    assert outlet.messages == []


@pytest.mark.parametrize(
    ("topic", "payload", "result"),
    [
        (cmnd("strike-1"), b'{"power-flag":2}', "invalid"),  # a toggle needs a period
        (cmnd("strike-1"), b'{"power-flag":true}', "invalid"),
        (cmnd("siren-1", "J2", "alarm-mode"), b"2", "invalid"),
        (cmnd("reader-1") + "/success", b"4", "invalid"),
        (cmnd("strike-1", "J3"), b'{"power-flag":1}', "wrong_mode"),  # J3 is sensor-mode
        ("cmnd/f2-aabbccddee99/access-control-mode/J1/strike-1", b"", "ignored"),
        ("cmnd/f2-nonsense/x", b"", "invalid"),
    ],
)
def test_bad_commands_get_no_answer(topic: str, payload: bytes, result: str) -> None:
    controller, outlet, _ = make_controller()
    assert controller.handle_command(topic, payload).result == result
    assert outlet.messages == []


# --- reconnection --------------------------------------------------------------------------------


def test_backoff_doubles_to_its_cap_with_jitter() -> None:
    backoff = Backoff(0.5, 8.0)
    rng = random.Random(3)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0), (99, 8.0)]:
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays)
        assert max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4  # spread: no synchronised herd


def test_paho_sends_connect_over_the_socket_it_is_given() -> None:
    """Pins the paho hook the simulator relies on (_create_socket, called by reconnect)."""
    ours, broker = socket.socketpair()
    client = DeviceClient("f2-" + MAC)
    client.connect_async("127.0.0.1", 1)  # nothing listens there: paho must not connect
    client.prepared = ours
    try:
        client.reconnect()
        broker.settimeout(2)
        packet = broker.recv(1024)
        assert packet[0] == 0x10  # CONNECT
        assert b"f2-" + MAC.encode() in packet
        assert client.socket() is ours
    finally:
        client.force_close()
        broker.close()


# --- state directory and claim codes -------------------------------------------------------------


def make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    cn: str,
    public_key: ec.EllipticCurvePublicKey,
    days: int = 365,
) -> str:
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca[1].subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .sign(ca[0], hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_keys_are_private_from_creation_and_reused(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state").create()
    key = state.key("f2-" + MAC)
    path = state.files("f2-" + MAC).key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.root.stat().st_mode) == 0o700
    again = state.key("f2-" + MAC)
    assert again.private_numbers() == key.private_numbers()
    assert [p.name for p in state.devices.iterdir()] == [path.name]  # no temporary left over


def test_a_certificate_is_reused_only_while_it_is_good(tmp_path: Path) -> None:
    cn = "f2-" + MAC
    state = StateDir(tmp_path).create()
    ca = make_ca()
    ca_pem = ca[1].public_bytes(serialization.Encoding.PEM).decode()
    key = state.key(cn)
    week = timedelta(days=7)
    assert not state.valid_certificate(cn, renew_before=week)  # nothing stored yet

    state.store(cn, issue(ca, cn, key.public_key()), ca_pem)
    assert state.valid_certificate(cn, renew_before=week)

    state.store(cn, issue(ca, cn, key.public_key(), days=3), ca_pem)
    assert not state.valid_certificate(cn, renew_before=week)  # expires too soon: renew

    state.store(cn, issue(ca, "f2-aabbccddee02", key.public_key()), ca_pem)
    assert not state.valid_certificate(cn, renew_before=week)  # someone else's name

    other_key = ec.generate_private_key(ec.SECP256R1())
    state.store(cn, issue(ca, cn, other_key.public_key()), ca_pem)
    assert not state.valid_certificate(cn, renew_before=week)  # not our key

    other_ca = make_ca()
    state.store(cn, issue(other_ca, cn, key.public_key()), ca_pem)
    assert not state.valid_certificate(cn, renew_before=week)  # not from the CA we trust


def test_claim_codes_from_seed_demo_csv_even_when_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "codes.csv"
    first = claim_codes_csv({"aabbccddee01": "AAAA-BBBB-CCCC-DDDD"})
    second = claim_codes_csv({"aabbccddee02": "EEEE-FFFF-GGGG-HHHH"})
    path.write_text(first + second)
    assert read_claim_codes(path) == {
        "aabbccddee01": "AAAA-BBBB-CCCC-DDDD",
        "aabbccddee02": "EEEE-FFFF-GGGG-HHHH",
    }


def test_claim_codes_from_json(tmp_path: Path) -> None:
    path = tmp_path / "codes.json"
    path.write_text(json.dumps({"AA:BB:CC:DD:EE:01": "AAAA-BBBB-CCCC-DDDD"}))
    assert read_claim_codes(path) == {"aabbccddee01": "AAAA-BBBB-CCCC-DDDD"}
    path.write_text(json.dumps([{"mac": "aabbccddee02", "claim_code": "X123-Y456"}]))
    assert read_claim_codes(path) == {"aabbccddee02": "X123-Y456"}


def test_a_broken_claim_codes_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "codes.csv"
    path.write_text("not-a-mac,code\n")
    with pytest.raises(ClaimCodeError, match="not a claim codes file"):
        read_claim_codes(path)
    with pytest.raises(ClaimCodeError, match="cannot read"):
        read_claim_codes(tmp_path / "missing.csv")


# --- enrolment against a fake certgen -----------------------------------------------------------


class FakeCertgen:
    """POST /v1/enroll as certgen answers it: signs the CSR, or a problem; counts requests."""

    def __init__(self, codes: dict[str, str], busy: int = 0) -> None:
        self.ca = make_ca()
        self.codes = codes
        self.busy = busy  # answer this many requests with 503 first
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        if self.busy:
            self.busy -= 1
            return self._problem(503, "unavailable", {"Retry-After": "0"})
        if self.codes.get(body["mac"]) != body["claim_code"]:
            return self._problem(403, "enrolment_refused")
        csr = x509.load_pem_x509_csr(body["csr_pem"].encode())
        cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert cn == f"f2-{body['mac']}"
        public_key = csr.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        pem = issue(self.ca, str(cn), public_key)
        ca_pem = self.ca[1].public_bytes(serialization.Encoding.PEM).decode()
        answer = {
            "serial": "1",
            "cn": cn,
            "certificate_pem": pem,
            "ca_certificate_pem": ca_pem,
            "not_after": "2030-01-01T00:00:00Z",
            "private_key_pem": None,
        }
        return httpx.Response(200, json=answer)

    def _problem(
        self, status: int, reason: str, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        body = {"type": f"urn:f2pipe:certgen:problem:{reason}", "status": status, "reason": reason}
        return httpx.Response(status, json=body, headers=headers)


def enrol(state: StateDir, certgen: FakeCertgen, macs: list[str], codes: dict[str, str]) -> Any:
    return asyncio.run(
        enrol_all(
            macs,
            codes,
            state,
            "http://certgen",
            transport=httpx.MockTransport(certgen),
            renew_before=timedelta(days=7),
        )
    )


def test_enrolment_keeps_keys_here_and_is_not_repeated_while_certificates_are_good(
    tmp_path: Path,
) -> None:
    macs = ["aabbccddee01", "aabbccddee02", "aabbccddee03"]
    codes = {mac: f"CODE-{mac}" for mac in macs}
    certgen = FakeCertgen(codes)
    state = StateDir(tmp_path).create()
    report = enrol(state, certgen, macs, codes)
    assert sorted(report.enrolled) == macs
    assert all("private_key_pem" not in r and "csr_pem" in r for r in certgen.requests)
    for mac in macs:
        assert state.valid_certificate(f"f2-{mac}", renew_before=timedelta(days=7))
        assert stat.S_IMODE(state.files(f"f2-{mac}").key.stat().st_mode) == 0o600
    again = enrol(state, certgen, macs, codes)
    assert (again.enrolled, sorted(again.reused)) == ([], macs)
    assert len(certgen.requests) == 3  # nothing asked the second time


def test_a_refused_controller_fails_alone_and_busy_answers_are_retried(tmp_path: Path) -> None:
    codes = {"aabbccddee01": "RIGHT-CODE", "aabbccddee02": "RIGHT-CODE"}
    certgen = FakeCertgen(codes, busy=2)
    state = StateDir(tmp_path).create()
    given = {**codes, "aabbccddee02": "WRONG-CODE"}
    report = enrol(state, certgen, [*codes, "aabbccddee03"], given)
    assert report.enrolled == ["aabbccddee01"]
    assert report.failed == {"aabbccddee02": "enrolment_refused", "aabbccddee03": "no_claim_code"}
    assert len(certgen.requests) == 4  # two 503s retried, one refusal not retried


def test_certgen_is_reached_over_https_and_checked_against_our_ca_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from f2pipe_shared.settings import SettingsError
    from f2pipe_simulator.main import certgen_verify, options_from, parser
    from f2pipe_simulator.settings import Settings

    def ca_file(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make_ca()[1].public_bytes(serialization.Encoding.PEM))
        return path

    ca_dir = tmp_path / "ca"
    ca_file(ca_dir / "ca.crt")
    for name in ("MQTT_CA_FILE", "SIMULATOR_CERTGEN_CA_FILE", "SIMULATOR_CERTGEN_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CA_DIR", str(ca_dir))
    monkeypatch.setenv("CERTGEN_API_HOST", "certgen")
    settings = Settings.load()
    url = options_from(parser().parse_args([]), settings).certgen_url
    assert url == "https://certgen:8080"  # HTTPS unless told otherwise

    def trusted(settings: Settings) -> list[object]:
        context = certgen_verify(settings, url)
        assert isinstance(context, ssl.SSLContext)  # our CA only, not the system's
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname
        return [ca["subject"] for ca in context.get_ca_certs()]

    assert trusted(settings) == [((("commonName", "test CA"),),)]  # CA_DIR/ca.crt
    assert certgen_verify(settings, "http://certgen:8080") is True  # nothing to check
    monkeypatch.setenv("MQTT_CA_FILE", str(ca_file(tmp_path / "mqtt" / "ca.crt")))
    (ca_dir / "ca.crt").unlink()  # MQTT_CA_FILE, when set, comes first
    assert len(trusted(Settings.load())) == 1
    monkeypatch.setenv("SIMULATOR_CERTGEN_CA_FILE", str(tmp_path / "missing.crt"))
    with pytest.raises(SettingsError, match=r"missing\.crt"):
        certgen_verify(Settings.load(), url)


# --- the ledger ----------------------------------------------------------------------------------


def test_the_ledger_names_every_reading_and_sums_up(tmp_path: Path) -> None:
    controller, outlet, _ = make_controller()
    for _ in range(5):
        controller.load_message(0.5)
    controller.handle_command(cmnd("strike-1"), b'{"power-flag":1}')
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.header([controller.spec], seed=1)
    for n, message in enumerate(itertools.chain(outlet.messages), start=1):
        message.seq = n
        ledger.published(message)
    ledger.summary(acknowledged=len(outlet.messages))
    ledger.close()
    lines = read_ledger(tmp_path / "ledger.jsonl")
    header, *published, summary = lines
    assert header["type"] == "header"
    assert header["controllers"] == [MAC]
    env = next(t for t in header["templates"].values() if t["key"] == "environmental-sensor-v1")
    assert set(env["datapoints"]) == {"temperature", "humidity", "co2"}
    assert [p["seq"] for p in published] == list(range(1, len(outlet.messages) + 1))
    assert summary["type"] == "summary"
    assert summary["messages"] == len(published)
    assert summary["readings"] == sum(len(p["readings"]) for p in published)
    assert summary["published"]["strike"] == 1
    for line in published:
        assert line["payload"].encode() in {m.payload for m in outlet.messages}


def test_hex_payloads_are_space_separated_uppercase() -> None:
    controller, _, _ = make_controller()
    message = controller.sensor_message(controller.sensors[0])
    data = json.loads(message.payload)["data"]
    assert data == data.upper()
    assert " " in data
    assert parse_hex_frame(data)[:3] == bytes([1, 3, 6])


# --- the seams: a fake broker, a fake clock, the running fleet, load pacing, the service -------


class FakeClock(FakeTimers):
    """`ports.Clock` on fake time: ``sleep`` moves time on (firing what falls due) at once."""

    def __init__(self) -> None:
        super().__init__()
        self.slept: list[float] = []
        self.on_sleep: Callable[[], None] | None = None

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)
        if self.on_sleep is not None:
            self.on_sleep()
        await asyncio.sleep(0)

    def epoch_us(self) -> int:
        return int((1_700_000_000 + self.now) * 1e6)


class FakeConnection:
    """`ports.DeviceConnection`: connected at once; it takes up to ``queue_size`` messages,
    acknowledged at once with ``auto_ack``, otherwise when the test says (``ack_all``)."""

    def __init__(
        self,
        cn: str,
        clock: FakeClock,
        on_command: CommandHandler,
        on_ack: AckHandler,
        *,
        queue_size: int,
        auto_ack: bool,
    ) -> None:
        self.cn = cn
        self.clock = clock
        self.on_command = on_command
        self.on_ack = on_ack
        self.queue_size = queue_size
        self.auto_ack = auto_ack
        self.connected = True
        self.ever_connected = asyncio.Event()
        self.ever_connected.set()
        self.last_error: str | None = None
        self.pending: list[Message] = []
        self.sent: list[tuple[float, Message]] = []  # (fake time, message)
        self.closed = asyncio.Event()

    @property
    def outstanding(self) -> int:
        return len(self.pending)

    def publish(self, message: Message) -> bool:
        if len(self.pending) >= self.queue_size:
            return False
        self.sent.append((self.clock.time(), message))
        self.pending.append(message)
        if self.auto_ack:
            self.ack_all()
        return True

    def ack_all(self, ok: bool = True) -> None:
        pending, self.pending = self.pending, []
        for message in pending:
            self.on_ack(message, ok)

    def deliver(self, topic: str, payload: bytes) -> None:
        """A command arrives, as paho's on_message hands it over."""
        self.on_command(self.cn, topic, payload)

    async def run(self) -> None:
        await self.closed.wait()

    def misc(self) -> None:
        pass

    async def disconnect(self) -> None:
        self.connected = False
        self.closed.set()


class FakeBroker:
    """`ports.Broker`: a `FakeConnection` per controller, kept by CN."""

    def __init__(self, clock: FakeClock, *, queue_size: int = 1000, auto_ack: bool = True) -> None:
        self.clock = clock
        self.queue_size = queue_size
        self.auto_ack = auto_ack
        self.connections: dict[str, FakeConnection] = {}

    def connection(
        self, cn: str, *, on_command: CommandHandler, on_ack: AckHandler
    ) -> FakeConnection:
        connection = FakeConnection(
            cn,
            self.clock,
            on_command,
            on_ack,
            queue_size=self.queue_size,
            auto_ack=self.auto_ack,
        )
        self.connections[cn] = connection
        return connection

    def ack_all(self) -> None:
        for connection in self.connections.values():
            connection.ack_all()

    def sent(self) -> list[tuple[float, Message]]:
        return sorted(
            (s for c in self.connections.values() for s in c.sent), key=lambda s: s[1].seq
        )


class FakeEnrolment:
    """`ports.EnrolmentEndpoint`: every MAC with a code is enrolled, others fail; with
    ``block`` it never answers (until cancelled)."""

    def __init__(self, *, block: bool = False) -> None:
        self.block = block
        self.asked: list[str] = []

    async def enrol(self, macs: Sequence[str], codes: Mapping[str, str]) -> EnrolmentReport:
        self.asked += macs
        if self.block:
            await asyncio.Event().wait()
        report = EnrolmentReport()
        for mac in macs:
            if mac in codes:
                report.enrolled.append(mac)
            else:
                report.failed[mac] = "no_claim_code"
        return report


FLEET_MACS = ["aabbccddee01", "aabbccddee02", "aabbccddee03"]


def sample(metrics: SimulatorMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def open_fleet(
    clock: FakeClock,
    broker: FakeBroker,
    *,
    macs: Sequence[str] = FLEET_MACS,
    ledger: Ledger | None = None,
    metrics: SimulatorMetrics | None = None,
) -> RunningFleet:
    fleet = RunningFleet(metrics=metrics or SimulatorMetrics(), ledger=ledger)
    fleet.open(
        [demo_controller(mac) for mac in macs],
        broker=broker,
        clock=clock,
        seed=1,
        start_time=None,
        publish_interval=30.0,
        event_interval=300.0,
    )
    return fleet


def test_the_load_rate_paces_the_stream_on_the_clock() -> None:
    clock = FakeClock()
    broker = FakeBroker(clock)

    async def scenario() -> tuple[RunningFleet, LoadRun]:
        fleet = open_fleet(clock, broker)
        load = LoadRun(clock=clock, rate=200.0, count=100, event_share=0.2)
        assert await load.run(fleet, asyncio.Event()) == 0
        return fleet, load

    fleet, load = asyncio.run(scenario())
    sent = broker.sent()
    assert [m.seq for _, m in sent] == list(range(1, 101))
    start = sent[0][0]
    for k, (at, _) in enumerate(sent):
        # Message k goes out at k / rate, or at the next look at the clock (every 10 ms).
        assert k / 200.0 - 1e-9 <= at - start <= k / 200.0 + 0.01 + 1e-9, k
    # Round robin over the fleet in MAC order: message k comes from controller k mod n.
    assert [m.mac for _, m in sent[:6]] == FLEET_MACS * 2
    assert load.stats["load_sent"] == 100
    assert 0.49 <= load.stats["load_seconds"] <= 0.51
    assert sum(fleet.acked.values()) == 100
    assert fleet.dropped == 0


def test_a_load_run_ends_after_its_duration() -> None:
    clock = FakeClock()
    broker = FakeBroker(clock)

    async def scenario() -> LoadRun:
        load = LoadRun(clock=clock, rate=50.0, duration=2.0)
        assert await load.run(open_fleet(clock, broker), asyncio.Event()) == 0
        return load

    load = asyncio.run(scenario())
    assert 99 <= load.stats["load_sent"] <= 101  # 2 s at 50 messages/s
    assert load.stats["load_seconds"] == pytest.approx(2.0, abs=0.011)


def test_a_full_queue_makes_a_load_run_wait_and_drops_nothing() -> None:
    clock = FakeClock()
    broker = FakeBroker(clock, queue_size=2, auto_ack=False)
    clock.on_sleep = broker.ack_all  # the broker acknowledges while the generator waits

    async def scenario() -> RunningFleet:
        fleet = open_fleet(clock, broker)
        assert await LoadRun(clock=clock, count=40).run(fleet, asyncio.Event()) == 0
        broker.ack_all()
        return fleet

    fleet = asyncio.run(scenario())
    assert len(broker.sent()) == 40
    assert (fleet.dropped, sum(fleet.acked.values())) == (0, 40)
    assert clock.slept  # backpressure: it waited for acknowledgements ...
    assert set(clock.slept) == {0.002}  # ... and only for them (no rate: no pacing)


def test_a_full_queue_drops_and_counts_a_controllers_own_message() -> None:
    clock = FakeClock()
    broker = FakeBroker(clock, queue_size=1, auto_ack=False)
    metrics = SimulatorMetrics()

    async def scenario() -> RunningFleet:
        fleet = open_fleet(clock, broker, macs=[MAC], metrics=metrics)
        controller = fleet.controllers["f2-" + MAC]
        for sensor in controller.sensors[:2]:
            controller.outlet.publish(controller.sensor_message(sensor))
        return fleet

    fleet = asyncio.run(scenario())
    assert fleet.dropped == 1
    assert sample(metrics, "simulator_messages_dropped_total", kind="sensor") == 1


@dataclass
class Recorded:
    """A fleet of one controller (MAC) on a broker that acknowledges when told, its metrics,
    and a ledger in ledger.jsonl."""

    clock: FakeClock
    broker: FakeBroker
    metrics: SimulatorMetrics
    ledger: Ledger

    def run(self, scenario: Callable[[RunningFleet], None]) -> RunningFleet:
        """Open the fleet in an event loop, let `scenario` act on it, then close the ledger."""

        async def opened() -> RunningFleet:
            fleet = open_fleet(
                self.clock, self.broker, macs=[MAC], metrics=self.metrics, ledger=self.ledger
            )
            scenario(fleet)
            return fleet

        fleet = asyncio.run(opened())
        self.ledger.close()
        return fleet


@pytest.fixture
def recorded(tmp_path: Path) -> Recorded:
    clock = FakeClock()
    broker = FakeBroker(clock, auto_ack=False)
    return Recorded(clock, broker, SimulatorMetrics(), Ledger(tmp_path / "ledger.jsonl"))


def test_commands_are_answered_through_the_connection_counted_and_recorded(
    recorded: Recorded, tmp_path: Path
) -> None:
    def scenario(fleet: RunningFleet) -> None:
        recorded.ledger.header([fleet.controllers["f2-" + MAC].spec], mode="normal")
        connection = recorded.broker.connections["f2-" + MAC]
        connection.deliver(cmnd("strike-1"), b'{"power-flag":2,"period":5}')
        connection.deliver(cmnd("reader-1") + "/success", b"1")
        connection.deliver(cmnd("siren-1", "J2", "alarm-mode"), b"2")
        recorded.clock.advance(5.0)  # the strike reverts
        connection.ack_all()

    fleet = recorded.run(scenario)
    metrics = recorded.metrics
    sent = [m for _, m in recorded.broker.sent()]
    assert [(m.topic, json.loads(m.payload)["status"]) for m in sent] == [
        (f"stat/f2-{MAC}/access-control-mode/J1/strike-1", True),
        (f"stat/f2-{MAC}/access-control-mode/J1/strike-1", False),
    ]
    assert [m.seq for m in sent] == [1, 2]
    assert dict(fleet.acked) == {"strike": 2}
    assert sample(metrics, "simulator_commands_total", kind="strike", result="answered") == 1
    assert sample(metrics, "simulator_commands_total", kind="reader", result="signalled") == 1
    assert sample(metrics, "simulator_commands_total", kind="siren", result="invalid") == 1
    assert sample(metrics, "simulator_reader_signals_total", signal="success") == 1
    assert sample(metrics, "simulator_messages_published_total", kind="strike") == 2
    assert sample(metrics, "simulator_readings_total") == 2
    lines = read_ledger(tmp_path / "ledger.jsonl")
    assert [line["result"] for line in lines if line["type"] == "command"] == [
        "answered",
        "signalled",
        "invalid",
    ]
    assert [line["state"] for line in lines if line["type"] == "publish"] == [
        {"status": True},
        {"status": False},
    ]


def test_a_refused_message_is_counted_and_not_in_the_ledger(
    recorded: Recorded, tmp_path: Path
) -> None:
    def scenario(fleet: RunningFleet) -> None:
        recorded.ledger.header([], mode="normal")
        connection = recorded.broker.connections["f2-" + MAC]
        connection.deliver(cmnd("strike-1"), b'{"power-flag":1}')
        connection.ack_all(ok=False)

    fleet = recorded.run(scenario)
    metrics = recorded.metrics
    assert (fleet.refused, sum(fleet.acked.values())) == (1, 0)
    assert sample(metrics, "simulator_messages_refused_total", kind="strike") == 1
    assert [line["type"] for line in read_ledger(tmp_path / "ledger.jsonl")] == [
        "header",
        "command",
    ]


def test_each_metrics_instance_has_its_own_registry_with_every_series() -> None:
    first, second = SimulatorMetrics(), SimulatorMetrics()
    first.published.labels("sensor").inc()
    assert sample(first, "simulator_messages_published_total", kind="sensor") == 1
    assert sample(second, "simulator_messages_published_total", kind="sensor") == 0
    names = {family.name for family in second.registry.collect()}
    assert {
        "simulator_controllers",
        "simulator_controllers_connected",
        "simulator_enrolments",
        "simulator_connects",
        "simulator_disconnects",
        "simulator_messages_published",
        "simulator_messages_refused",
        "simulator_messages_dropped",
        "simulator_messages_outstanding",
        "simulator_readings",
        "simulator_commands",
        "simulator_reader_signals",
        "process_resident_memory_bytes",
        "python_info",
    } <= names
    for kind in ComponentKind:  # labelled series exist at 0 before anything happens
        assert (
            second.registry.get_sample_value(
                "simulator_messages_dropped_total", {"kind": kind.value}
            )
            == 0
        )
    assert second.registry.get_sample_value("simulator_enrolments_total", {"result": "reused"}) == 0


def test_the_fleet_is_chosen_by_claim_code_or_certificate_then_count_then_shard(
    tmp_path: Path,
) -> None:
    macs = [f"aabbccddee{n:02x}" for n in range(1, 9)]
    registered = [ControllerSpec(mac) for mac in macs]
    state = StateDir(tmp_path).create()
    state.files("f2-" + macs[7]).cert.write_text("a certificate")
    codes = {mac: "CODE" for mac in macs[:6]}
    chosen = choose_fleet(registered, codes, state)
    assert [c.mac for c in chosen] == [*macs[:6], macs[7]]  # the 7th has neither
    assert choose_fleet(registered, codes, None) == registered  # plain MQTT: every one
    assert [c.mac for c in choose_fleet(registered, codes, state, controllers=4)] == macs[:4]
    shard = choose_fleet(registered, codes, state, shard=(2, 3))
    assert [c.mac for c in shard] == [macs[1], macs[4]]


def make_service(
    tmp_path: Path,
    clock: FakeClock,
    broker: FakeBroker,
    enrolment: FakeEnrolment | None,
    **options: Any,
) -> SimulatorService:
    run = Options(state_dir=tmp_path / "state", certgen_url="http://certgen", seed=1, **options)
    load = None
    if run.load:
        load = LoadRun(clock=clock, count=run.count, event_share=run.event_share)
    return SimulatorService(
        [demo_controller(mac) for mac in FLEET_MACS],
        {mac: "CODE" for mac in FLEET_MACS[:2]},
        options=run,
        settings=SimulatorSettings(),
        enrolment=enrolment,
        broker=broker,
        clock=clock,
        metrics=SimulatorMetrics(),
        ledger=None if run.ledger is None else Ledger(run.ledger),
        load=load,
    )


def test_a_load_run_enrols_connects_publishes_and_sums_up(tmp_path: Path) -> None:
    clock = FakeClock()
    broker = FakeBroker(clock)
    ledger = tmp_path / "run.jsonl"
    enrolment = FakeEnrolment()
    service = make_service(tmp_path, clock, broker, enrolment, load=True, count=30, ledger=ledger)
    assert asyncio.run(service.run()) == 0
    assert enrolment.asked == FLEET_MACS
    assert sorted(broker.connections) == ["f2-" + mac for mac in FLEET_MACS[:2]]  # one failed
    assert all(not c.connected for c in broker.connections.values())  # disconnected at the end
    header, *published, summary = read_ledger(ledger)
    assert (header["mode"], header["controllers"]) == ("load", FLEET_MACS[:2])
    assert len(published) == 30
    assert (summary["messages"], summary["unacknowledged"], summary["load_sent"]) == (30, 0, 30)
    ok, details = service.health()
    assert not ok
    assert details == {
        "phase": "stopping",
        "controllers": 3,
        "running": 2,
        "connected": 0,
        "messages": 30,
    }


def test_a_load_run_whose_messages_are_not_acknowledged_fails(tmp_path: Path) -> None:
    clock = FakeClock()
    broker = FakeBroker(clock, auto_ack=False)
    service = make_service(tmp_path, clock, broker, FakeEnrolment(), load=True, count=5)
    assert asyncio.run(service.run()) == 1
    assert clock.now - 1000.0 >= 120  # it waited for the acknowledgements first


def test_normal_mode_publishes_on_its_own_until_stopped(tmp_path: Path) -> None:
    clock = FakeClock()
    broker = FakeBroker(clock)
    service = make_service(tmp_path, clock, broker, None, ledger=tmp_path / "normal.jsonl")

    async def scenario() -> int:
        enough = asyncio.Event()

        def count() -> None:  # fake time moves on with the service's housekeeping
            if service.fleet is not None and sum(service.fleet.acked.values()) >= 45:
                enough.set()

        clock.on_sleep = count
        running = asyncio.create_task(service.run())
        await enough.wait()
        ok, details = service.health()
        assert ok
        assert details["phase"] == "running"
        assert (details["controllers"], details["running"], details["connected"]) == (3, 3, 3)
        assert details["messages"] >= 45
        service.stop()
        return await running

    assert asyncio.run(scenario()) == 0
    lines = read_ledger(tmp_path / "normal.jsonl")
    assert lines[0]["mode"] == "normal"
    assert len(lines[0]["controllers"]) == 3  # no enrolment: plain MQTT
    assert lines[-1]["type"] == "summary"
    assert lines[-1]["acknowledged"] >= 45
    sent = [m for _, m in broker.sent()]
    assert {m.kind for m in sent} >= {ComponentKind.SENSOR}
    assert len({m.topic for m in sent if m.kind is ComponentKind.SENSOR}) == 15  # every sensor


def test_enrol_only_exits_1_when_a_controller_failed_and_writes_no_ledger(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    broker = FakeBroker(clock)
    service = make_service(
        tmp_path, clock, broker, FakeEnrolment(), enrol_only=True, ledger=tmp_path / "l.jsonl"
    )
    assert asyncio.run(service.run()) == 1  # the third controller has no claim code
    assert broker.connections == {}
    assert not (tmp_path / "l.jsonl").exists()


def test_a_stop_during_enrolment_ends_the_run_at_once(tmp_path: Path) -> None:
    clock = FakeClock()
    service = make_service(tmp_path, clock, FakeBroker(clock), FakeEnrolment(block=True))

    async def scenario() -> int:
        asyncio.get_running_loop().call_soon(service.stop)
        return await service.run()

    assert asyncio.run(scenario()) == 0
    assert service.phase == "enrolling"
