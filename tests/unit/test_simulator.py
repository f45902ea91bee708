"""The simulator's parts without servers: values and frames, behaviour, commands, state."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import random
import socket
import stat
from collections.abc import Callable
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
from f2pipe_shared.timestamps import parse_device_timestamp, to_epoch_us
from f2pipe_shared.topics import ComponentKind, parse_topic
from f2pipe_simulator.controller import Controller, Message, Stamper
from f2pipe_simulator.enrolment import ClaimCodeError, enrol_all, read_claim_codes
from f2pipe_simulator.identity import StateDir
from f2pipe_simulator.ledger import Ledger
from f2pipe_simulator.mqtt import Backoff, DeviceClient
from f2pipe_simulator.registry import (
    ControllerSpec,
    Datapoint,
    Template,
    assemble_fleet,
    build_templates,
)
from f2pipe_simulator.signals import SensorModel, encodable_range, profile_for, quantize

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
    return build_templates(rows)


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


class ListSink:
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
) -> tuple[Controller, ListSink, FakeTimers]:
    timers = timers or FakeTimers()
    sink = ListSink()
    fake = timers

    def clock() -> int:  # the device's wall clock follows the fake time
        return int((1_700_000_000 + fake.now) * 1e6)

    controller = Controller(
        demo_controller(),
        sink=sink,
        timers=timers,
        stamper=Stamper(clock, start_us=start_us, step_us=int(publish_interval * 1e6)),
        rng=random.Random(f"{seed}/{MAC}"),
        publish_interval=publish_interval,
        event_interval=event_interval,
    )
    return controller, sink, timers


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
    controller, sink, timers = make_controller(event_interval=1e9)
    controller.start()
    timers.advance(30 * 10 + 0.001)
    per_topic: dict[str, list[str]] = {}
    for message in sink.messages:
        per_topic.setdefault(message.topic, []).append(message.timestamp)
    assert len(per_topic) == 5
    assert all(len(stamps) == 10 for stamps in per_topic.values())
    assert all(stamps == sorted(set(stamps)) for stamps in per_topic.values())
    controller.stop()
    timers.advance(300)
    assert len(sink.messages) == 50


def test_doors_buttons_readers_and_motion_change_state_at_random_times() -> None:
    controller, sink, timers = make_controller(publish_interval=1e9, event_interval=60)
    controller.start()
    timers.advance(6 * 3600)
    kinds = {m.kind for m in sink.messages}
    assert kinds == {
        ComponentKind.DOOR_SENSORS,
        ComponentKind.EXIT_BUTTONS,
        ComponentKind.READER,
        ComponentKind.MOTION_SENSOR,
    }
    for message in sink.messages:  # every payload is what the pipeline accepts
        parse_payload(parse_topic(message.topic), message.payload)
    doors = [m for m in sink.messages if m.kind is ComponentKind.DOOR_SENSORS]
    assert doors[0].state == {"door-sensor-1": True, "door-sensor-2": False} or doors[0].state == {
        "door-sensor-1": False,
        "door-sensor-2": True,
    }
    # A door that opened closes again: states alternate open / closed.
    opened = [any(m.state.values()) for m in doors if m.state is not None]
    assert opened[::2] == [True] * len(opened[::2])
    assert not any(opened[1::2])
    assert doors[0].readings == {k: 1.0 if v else 0.0 for k, v in (doors[0].state or {}).items()}
    scans = [m for m in sink.messages if m.kind is ComponentKind.READER]
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


def answers(sink: ListSink) -> list[tuple[str, bool]]:
    out = []
    for message in sink.messages:
        assert message.state is not None
        out.append((message.topic.split("/", 4)[4], message.state["status"]))
    return out


def test_strike_commands_power_unpower_toggle_and_report() -> None:
    controller, sink, timers = make_controller()
    strike = cmnd("strike-1")
    assert controller.handle_command(strike, b'{"power-flag":1}').result == "answered"
    assert controller.handle_command(strike, b'{"power-flag":0}').result == "answered"
    assert controller.handle_command(strike, b"").result == "reported"
    outcome = controller.handle_command(strike, b'{"power-flag":2,"period":5}')
    assert (outcome.result, outcome.answers) == ("answered", 1)
    assert answers(sink) == [
        ("strike-1", True),
        ("strike-1", False),
        ("strike-1", False),
        ("strike-1", True),
    ]
    timers.advance(4.9)
    assert len(sink.messages) == 4
    timers.advance(0.2)  # period over: back to unpowered
    assert answers(sink)[-1] == ("strike-1", False)
    assert controller.handle_command(strike, b"").result == "reported"
    assert answers(sink)[-1] == ("strike-1", False)
    assert sink.messages[0].topic == f"stat/f2-{MAC}/access-control-mode/J1/strike-1"
    assert sink.messages[0].readings == {"status": 1.0}  # the strike on J1 has a template
    assert sink.messages[0].component.device_id is not None


def test_a_new_strike_command_cancels_the_pending_revert() -> None:
    controller, sink, timers = make_controller()
    controller.handle_command(cmnd("strike-1"), b'{"power-flag":2,"period":5}')
    controller.handle_command(cmnd("strike-1"), b'{"power-flag":1}')
    timers.advance(10)
    assert answers(sink) == [("strike-1", True), ("strike-1", True)]


def test_strike_without_a_pin_still_answers_but_maps_to_no_device() -> None:
    controller, sink, _ = make_controller()
    controller.handle_command(cmnd("strike-2"), b'{"power-flag":1}')
    (message,) = [m for m in sink.messages if m.topic.endswith("strike-2")]
    assert message.component.device_id is None
    assert message.readings == {}


def test_siren_on_off_and_report() -> None:
    controller, sink, _ = make_controller()
    siren = cmnd("siren-1", "J2", "alarm-mode")
    for payload in (b"1", b"", b"0", b""):
        controller.handle_command(siren, payload)
    assert answers(sink) == [("siren-1", v) for v in (True, True, False, False)]


def test_reader_success_signals_light_feedback_without_an_answer() -> None:
    controller, sink, _ = make_controller()
    topic = cmnd("reader-1") + "/success"
    details = [controller.handle_command(topic, str(n).encode()).detail for n in (1, 2, 3)]
    assert details == ["success", "fail_1", "fail_2"]
    assert controller.reader_signals[("J1", "reader-1")] == 3
    assert sink.messages == []


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
    controller, sink, _ = make_controller()
    assert controller.handle_command(topic, payload).result == result
    assert sink.messages == []


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
            return self._problem(403, "wrong_claim_code")
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
    assert report.failed == {"aabbccddee02": "wrong_claim_code", "aabbccddee03": "no_claim_code"}
    assert len(certgen.requests) == 4  # two 503s retried, one refusal not retried


# --- the ledger ----------------------------------------------------------------------------------


def test_the_ledger_names_every_reading_and_sums_up(tmp_path: Path) -> None:
    controller, sink, _ = make_controller()
    for _ in range(5):
        controller.load_message(0.5)
    controller.handle_command(cmnd("strike-1"), b'{"power-flag":1}')
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.header([controller.spec], seed=1)
    for n, message in enumerate(itertools.chain(sink.messages), start=1):
        message.seq = n
        ledger.published(message)
    ledger.summary(acknowledged=len(sink.messages))
    ledger.close()
    lines = read_ledger(tmp_path / "ledger.jsonl")
    header, *published, summary = lines
    assert header["type"] == "header"
    assert header["controllers"] == [MAC]
    env = next(t for t in header["templates"].values() if t["key"] == "environmental-sensor-v1")
    assert set(env["datapoints"]) == {"temperature", "humidity", "co2"}
    assert [p["seq"] for p in published] == list(range(1, len(sink.messages) + 1))
    assert summary["type"] == "summary"
    assert summary["messages"] == len(published)
    assert summary["readings"] == sum(len(p["readings"]) for p in published)
    assert summary["published"]["strike"] == 1
    for line in published:
        assert line["payload"].encode() in {m.payload for m in sink.messages}


def test_hex_payloads_are_space_separated_uppercase() -> None:
    controller, _, _ = make_controller()
    message = controller.sensor_message(controller.sensors[0])
    data = json.loads(message.payload)["data"]
    assert data == data.upper()
    assert " " in data
    assert parse_hex_frame(data)[:3] == bytes([1, 3, 6])
