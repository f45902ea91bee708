"""Mosquitto with our configuration, ACL and CA: who may connect, publish and read what.

Every broker here runs the real template (f2pipe_mqtt_broker's mosquitto.conf, rendered by
f2pipe.brokerconfig) under run-broker.sh, as docker-compose runs it, with certificates from
f2pipe_certgen.ca in a temporary directory.

Refusals at the TLS level are asserted by the alert the broker sends. With TLS 1.2 the
broker's verdict on our certificate arrives inside the handshake, so paho's connect() raises
it; with TLS 1.3 the client finishes its side of the handshake first and reads the alert on
its first read after connect().
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from f2pipe.brokerconfig import ACL, TEMPLATE, render, supervisor_command, write
from f2pipe.cli import main as cli_main
from f2pipe_devtools.servers import MissingBinaryError, ServerProcess, free_port
from f2pipe_devtools.servers.base import find_binary
from tests.conftest import missing
from tests.integration.tlskit import (
    POLL_SECONDS,
    Identity,
    Pki,
    SupervisedMosquitto,
    start_broker,
)

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
WAIT = 5.0  # seconds any single expected event may take
DEVICE_A = "f2-0000000000a1"
DEVICE_B = "f2-0000000000b2"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SupervisedMosquitto]:
    server = start_broker(tmp_path_factory.mktemp("broker"), pki)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def device_a(pki: Pki) -> Identity:
    return pki.device(DEVICE_A)


@pytest.fixture(scope="module")
def device_b(pki: Pki) -> Identity:
    return pki.device(DEVICE_B)


# --- clients ----------------------------------------------------------------------------------


def tls_context(
    ca_file: Path, identity: Identity | None, tls: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    if identity is not None:
        context.load_cert_chain(identity.cert, identity.key)
    if tls is not None:
        context.minimum_version = context.maximum_version = tls
    return context


class Client:
    """A paho client with one identity that records what it receives."""

    def __init__(
        self,
        port: int,
        ca_file: Path,
        identity: Identity,
        *,
        protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv311,
        clean: bool = True,
        manual_ack: bool = False,
    ) -> None:
        self.port = port
        self.cn = identity.cn
        v311 = protocol == mqtt.MQTTv311
        self.paho = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=identity.cn,  # the broker uses the CN whatever we send
            clean_session=clean if v311 else None,
            protocol=protocol,
            manual_ack=manual_ack,
            reconnect_on_failure=False,  # a dropped connection is what some tests wait for
        )
        self.paho.tls_set(str(ca_file), str(identity.cert), str(identity.key))
        self.clean = clean
        self.messages: list[mqtt.MQTTMessage] = []
        self.suback: dict[int, list[int]] = {}
        self.puback: dict[int, int] = {}
        self.changed = threading.Condition()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_message = self._on_message
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_publish = self._on_publish

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> Client:
        self.connected.clear()
        self.disconnected.clear()
        if self.paho.protocol == mqtt.MQTTv5:
            self.paho.connect(HOST, self.port, keepalive=30, clean_start=self.clean)
        else:  # MQTT 3.1.1 takes clean_session from the constructor
            self.paho.connect(HOST, self.port, keepalive=30)
        self.paho.loop_start()
        assert self.connected.wait(WAIT), f"{self.cn}: no CONNACK"
        return self

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()

    def subscribe(self, *topics: str) -> list[int]:
        """Subscribe at QoS 1; return the SUBACK's reason codes (128 and up: refused)."""
        _, mid = self.paho.subscribe([(topic, 1) for topic in topics])
        assert mid is not None
        with self.changed:
            assert self.changed.wait_for(lambda: mid in self.suback, WAIT), "no SUBACK"
            return self.suback[mid]

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1 and wait for the PUBACK; return its reason code (MQTT 5)."""
        info = self.paho.publish(topic, payload, qos=1)
        with self.changed:
            assert self.changed.wait_for(lambda: info.mid in self.puback, WAIT), "no PUBACK"
            return self.puback[info.mid]

    def wait_for(self, count: int) -> list[tuple[str, bytes]]:
        with self.changed:
            self.changed.wait_for(lambda: len(self.messages) >= count, WAIT)
            return [(m.topic, bytes(m.payload)) for m in self.messages]

    def _on_connect(
        self, _c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        if not reason.is_failure:
            self.connected.set()

    def _on_disconnect(self, *_args: object) -> None:
        self.disconnected.set()

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with self.changed:
            self.messages.append(message)
            self.changed.notify_all()

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, mid: int, codes: list[ReasonCode], _p: Properties
    ) -> None:
        with self.changed:
            self.suback[mid] = [code.value for code in codes]
            self.changed.notify_all()

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, reason: ReasonCode, _p: object
    ) -> None:
        with self.changed:
            self.puback[mid] = reason.value
            self.changed.notify_all()


def refusal(port: int, ca_file: Path, identity: Identity | None, tls: ssl.TLSVersion) -> str:
    """Connect and return the TLS alert the broker refused us with.

    TLS 1.2: the alert arrives inside the handshake, and paho's connect() raises it. TLS 1.3:
    our handshake is complete before the broker checks our certificate, and its alert races
    paho's CONNECT, which then fails as a bare EOF; so we read the alert ourselves, before
    sending anything.
    """
    context = tls_context(ca_file, identity, tls)
    if tls == ssl.TLSVersion.TLSv1_2:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe")
        client.tls_set_context(context)
        try:
            client.connect(HOST, port, keepalive=30)
        except ssl.SSLError as exc:
            return str(exc.reason)
        client.disconnect()
        return "accepted"
    with (
        socket.create_connection((HOST, port), timeout=WAIT) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as sock,
    ):
        # An accepted client would wait here for a CONNACK to a CONNECT it never sent.
        sock.settimeout(1.0)
        try:
            sock.recv(1)
        except ssl.SSLError as exc:
            return str(exc.reason)
        except TimeoutError:
            return "accepted"
    return "closed without an alert"


TLS_VERSIONS = pytest.mark.parametrize(
    "tls", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)


# --- a device and its own topics --------------------------------------------------------------


def test_device_publishes_its_own_stat_and_tele_and_the_bridge_reads_them(
    broker: SupervisedMosquitto, pki: Pki, device_a: Identity
) -> None:
    topics = [
        f"stat/{DEVICE_A}/access-control-mode/J1/door-sensors",
        f"tele/{DEVICE_A}/sensor-mode/J3/sensor-1",
    ]
    with Client(broker.port, pki.ca_file, pki.service("bridge")) as bridge:
        assert bridge.subscribe("stat/#", "tele/#") == [1, 1]
        with Client(broker.port, pki.ca_file, device_a, protocol=mqtt.MQTTv5) as device:
            assert [device.publish(topic, b'{"n": 1}') for topic in topics] == [0, 0]
        assert bridge.wait_for(2) == [(topic, b'{"n": 1}') for topic in topics]


def test_operator_command_reaches_the_device(
    broker: SupervisedMosquitto, pki: Pki, device_a: Identity
) -> None:
    topic = f"cmnd/{DEVICE_A}/access-control-mode/J1/strike-1"
    with Client(broker.port, pki.ca_file, device_a) as device:
        assert device.subscribe(f"cmnd/{DEVICE_A}/#") == [1]
        with Client(broker.port, pki.ca_file, pki.service("operator"), protocol=mqtt.MQTTv5) as op:
            assert op.publish(topic, b'{"period": 3}') == 0
        assert device.wait_for(1) == [(topic, b'{"period": 3}')]


def test_operator_reads_what_devices_report(
    broker: SupervisedMosquitto, pki: Pki, device_a: Identity
) -> None:
    topic = f"stat/{DEVICE_A}/alarm-mode/J2/siren"
    with Client(broker.port, pki.ca_file, pki.service("operator")) as operator:
        assert operator.subscribe("stat/#", "tele/#") == [1, 1]
        with Client(broker.port, pki.ca_file, device_a) as device:
            device.publish(topic, b"{}")
        assert operator.wait_for(1) == [(topic, b"{}")]


def test_bridge_reads_every_device_through_a_shared_subscription(
    broker: SupervisedMosquitto, pki: Pki, device_a: Identity, device_b: Identity
) -> None:
    with Client(broker.port, pki.ca_file, pki.service("bridge")) as bridge:
        assert bridge.subscribe("$share/g/stat/#", "$share/g/tele/#") == [1, 1]
        for identity in (device_a, device_b):
            with Client(broker.port, pki.ca_file, identity) as device:
                device.publish(f"tele/{identity.cn}/sensor-mode/J3/sensor-1", b"t")
                device.publish(f"stat/{identity.cn}/access-control-mode/J1/strike-1", b"s")
        received = bridge.wait_for(4)
    assert sorted(received) == sorted(
        [(f"tele/{cn}/sensor-mode/J3/sensor-1", b"t") for cn in (DEVICE_A, DEVICE_B)]
        + [(f"stat/{cn}/access-control-mode/J1/strike-1", b"s") for cn in (DEVICE_A, DEVICE_B)]
    )


# --- what an identity may not do --------------------------------------------------------------


def test_device_cannot_publish_on_another_devices_topics(
    broker: SupervisedMosquitto, pki: Pki, device_a: Identity
) -> None:
    forged = [f"stat/{DEVICE_B}/alarm-mode/J2/siren", f"tele/{DEVICE_B}/sensor-mode/J3/sensor-1"]
    marker = f"tele/{DEVICE_A}/sensor-mode/J3/sensor-1"
    with Client(broker.port, pki.ca_file, pki.service("bridge")) as bridge:
        bridge.subscribe("stat/#", "tele/#")
        with Client(broker.port, pki.ca_file, device_a, protocol=mqtt.MQTTv5) as device:
            # MQTT 5 tells the publisher: 135, not authorised.
            assert [device.publish(topic, b"forged") for topic in forged] == [135, 135]
            # One connection's messages arrive in order: once the marker is in, anything
            # published before it would have been too.
            device.publish(marker, b"marker")
        assert bridge.wait_for(1) == [(marker, b"marker")]


def test_device_cannot_read_another_devices_commands(
    broker: SupervisedMosquitto, pki: Pki, device_a: Identity
) -> None:
    with Client(broker.port, pki.ca_file, device_a) as device:
        # Mosquitto grants the subscription but delivers nothing the ACL forbids.
        assert device.subscribe(f"cmnd/{DEVICE_B}/#", "cmnd/#", "stat/#") == [1, 1, 1]
        with Client(broker.port, pki.ca_file, pki.service("operator")) as operator:
            operator.publish(f"cmnd/{DEVICE_B}/alarm-mode/J2/siren", b"for B")
            operator.publish(f"cmnd/{DEVICE_A}/alarm-mode/J2/siren", b"for A")
        received = device.wait_for(1)
    assert received == [(f"cmnd/{DEVICE_A}/alarm-mode/J2/siren", b"for A")]


def test_bridge_cannot_send_commands(
    broker: SupervisedMosquitto, pki: Pki, device_a: Identity
) -> None:
    with Client(broker.port, pki.ca_file, device_a) as device:
        device.subscribe(f"cmnd/{DEVICE_A}/#")
        with Client(
            broker.port, pki.ca_file, pki.service("bridge"), protocol=mqtt.MQTTv5
        ) as bridge:
            assert bridge.publish(f"cmnd/{DEVICE_A}/alarm-mode/J2/siren", b"x") == 135
        with Client(broker.port, pki.ca_file, pki.service("operator")) as operator:
            operator.publish(f"cmnd/{DEVICE_A}/alarm-mode/J2/siren", b"marker")
        assert device.wait_for(1) == [(f"cmnd/{DEVICE_A}/alarm-mode/J2/siren", b"marker")]


# --- who may not connect ----------------------------------------------------------------------


@TLS_VERSIONS
def test_no_client_certificate_is_refused(
    broker: SupervisedMosquitto, pki: Pki, tls: ssl.TLSVersion
) -> None:
    expected = {
        ssl.TLSVersion.TLSv1_2: "SSLV3_ALERT_HANDSHAKE_FAILURE",
        ssl.TLSVersion.TLSv1_3: "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    }
    assert refusal(broker.port, pki.ca_file, None, tls) == expected[tls]


@TLS_VERSIONS
def test_certificate_from_another_ca_is_refused(
    broker: SupervisedMosquitto, pki: Pki, tmp_path: Path, tls: ssl.TLSVersion
) -> None:
    # The right name, a well-formed certificate, but signed by a CA the broker does not know.
    impostor = Pki.create(tmp_path).device(DEVICE_A)
    assert refusal(broker.port, pki.ca_file, impostor, tls) == "TLSV1_ALERT_UNKNOWN_CA"


@TLS_VERSIONS
def test_expired_certificate_is_refused(
    broker: SupervisedMosquitto, pki: Pki, tls: ssl.TLSVersion
) -> None:
    expired = pki.expired_device("f2-0000000000e1")
    assert refusal(broker.port, pki.ca_file, expired, tls) == "SSLV3_ALERT_CERTIFICATE_EXPIRED"


def test_plain_tcp_gets_no_mqtt_answer(broker: SupervisedMosquitto) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plain")
    client.connect(HOST, broker.port, keepalive=30)  # TCP only; CONNECT goes out in clear
    sock = client.socket()
    assert isinstance(sock, socket.socket)
    sock.settimeout(WAIT)
    try:
        answer = sock.recv(16)
    except ConnectionResetError:
        answer = b""
    finally:
        sock.close()
    # The broker saw no TLS ClientHello and hung up: no CONNACK (0x20), nothing at all.
    assert answer == b""


def test_tls_1_3_is_negotiated_and_tls_1_1_is_refused(
    broker: SupervisedMosquitto, pki: Pki, device_a: Identity
) -> None:
    with Client(broker.port, pki.ca_file, device_a) as device:
        sock = device.paho.socket()
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.version() == "TLSv1.3"

    old = tls_context(pki.ca_file, device_a)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let our side offer TLS 1.1 at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="old")
    client.tls_set_context(old)
    with pytest.raises(ssl.SSLError) as caught:
        client.connect(HOST, broker.port)
    assert caught.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"


@pytest.mark.parametrize(
    ("suites", "accepted"),
    [
        ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256", True),
        ("ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305", True),
        ("ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA", False),  # CBC with SHA-1
        ("ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256", False),  # CBC
        ("AES128-GCM-SHA256", False),  # no forward secrecy
    ],
)
def test_tls_1_2_accepts_only_forward_secret_aead_suites(
    broker: SupervisedMosquitto, pki: Pki, device_a: Identity, suites: str, accepted: bool
) -> None:
    context = tls_context(pki.ca_file, device_a, ssl.TLSVersion.TLSv1_2)
    context.set_ciphers(suites + ":@SECLEVEL=0")  # our side offers exactly these
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="suites")
    client.tls_set_context(context)
    if accepted:
        client.connect(HOST, broker.port)
        client.disconnect()
        return
    with pytest.raises(ssl.SSLError) as caught:
        client.connect(HOST, broker.port)
    assert caught.value.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"


# --- queues for the bridge --------------------------------------------------------------------


def test_an_offline_bridge_session_keeps_more_than_mosquittos_default_1000(
    broker: SupervisedMosquitto, pki: Pki, device_a: Identity
) -> None:
    count = 1500
    bridge = Client(broker.port, pki.ca_file, pki.service("bridge"), clean=False)
    with bridge:
        bridge.subscribe(f"tele/{DEVICE_A}/#")
    with Client(broker.port, pki.ca_file, device_a) as device:
        infos = [
            device.paho.publish(f"tele/{DEVICE_A}/sensor-mode/J3/sensor-1", str(i), qos=1)
            for i in range(count)
        ]
        for info in infos:
            info.wait_for_publish(WAIT)
    with bridge:
        received = bridge.wait_for(count)
    with Client(broker.port, pki.ca_file, pki.service("bridge"), clean=True):
        pass  # ends the persistent session, so no later test inherits it
    assert [int(payload) for _, payload in received] == list(range(count))


def test_the_bridge_gets_thousands_of_messages_before_it_acknowledges_any(
    broker: SupervisedMosquitto, pki: Pki, device_a: Identity
) -> None:
    count = 300  # Mosquitto's default max_inflight_messages would stop at 20
    with Client(broker.port, pki.ca_file, pki.service("bridge"), manual_ack=True) as bridge:
        bridge.subscribe(f"tele/{DEVICE_A}/#")
        with Client(broker.port, pki.ca_file, device_a) as device:
            for i in range(count):
                device.paho.publish(f"tele/{DEVICE_A}/sensor-mode/J3/sensor-1", str(i), qos=1)
            received = bridge.wait_for(count)
    assert len(received) == count


# --- revocation reaches the running broker ----------------------------------------------------


def refused_within(
    seconds: float, port: int, ca_file: Path, identity: Identity, tls: ssl.TLSVersion
) -> float:
    """Seconds until the broker refuses `identity` as revoked (it may be restarting meanwhile)."""
    start = time.monotonic()
    outcome = ""
    while time.monotonic() - start < seconds:
        try:
            outcome = refusal(port, ca_file, identity, tls)
        except OSError as exc:  # the port is closed for a moment while Mosquitto restarts
            outcome = repr(exc)
        if outcome == "SSLV3_ALERT_CERTIFICATE_REVOKED":
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{identity.cn} still not refused after {seconds}s: {outcome}")


def test_revoked_device_is_dropped_and_refused_once_the_crl_changes(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    pki = Pki.create(tmp_path / "pki")
    victim, probe = pki.device("f2-00000000000c"), pki.device("f2-00000000000d")
    bystander = pki.device(DEVICE_A)
    broker = start_broker(tmp_path / "broker", pki)
    try:
        with Client(broker.port, pki.ca_file, victim) as connected:
            assert refusal(broker.port, pki.ca_file, probe, ssl.TLSVersion.TLSv1_2) == "accepted"
            start = time.monotonic()
            pki.revoke(victim.cn, probe.cn)
            # run-broker.sh notices within POLL_SECONDS and restarts Mosquitto: every
            # connection drops, and the victim's does too.
            assert connected.disconnected.wait(POLL_SECONDS + WAIT), "victim still connected"
            dropped = time.monotonic() - start
        refused = dropped + refused_within(
            WAIT, broker.port, pki.ca_file, probe, ssl.TLSVersion.TLSv1_2
        )
        for tls in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            assert (
                refusal(broker.port, pki.ca_file, victim, tls) == "SSLV3_ALERT_CERTIFICATE_REVOKED"
            )
        with Client(broker.port, pki.ca_file, bystander, protocol=mqtt.MQTTv5) as device:
            # 16: accepted, no subscriber for it.
            assert device.publish(f"tele/{DEVICE_A}/sensor-mode/J3/sensor-1", b"still in") == 16
    finally:
        broker.stop()
    record_property("revoked_client_dropped_after_s", round(dropped, 2))
    record_property("revoked_client_refused_after_s", round(refused, 2))
    # One poll, one second for the files to settle, the restart, and slack for a busy machine.
    assert dropped <= POLL_SECONDS + 1 + 2


def test_restart_for_a_new_crl_keeps_an_offline_bridges_queued_messages(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path / "pki")
    device, revoked = pki.device(DEVICE_A), pki.device("f2-00000000000c")
    broker = start_broker(tmp_path / "broker", pki)
    try:
        bridge = Client(broker.port, pki.ca_file, pki.service("bridge"), clean=False)
        with bridge:
            bridge.subscribe("tele/#")
        with Client(broker.port, pki.ca_file, device) as publisher:
            for i in range(10):
                publisher.publish(f"tele/{DEVICE_A}/sensor-mode/J3/sensor-1", str(i).encode())
        pki.revoke(revoked.cn)
        refused_within(
            POLL_SECONDS + WAIT, broker.port, pki.ca_file, revoked, ssl.TLSVersion.TLSv1_2
        )
        with bridge:
            received = bridge.wait_for(10)
    finally:
        broker.stop()
    assert [payload for _, payload in received] == [str(i).encode() for i in range(10)]


def test_sighup_alone_gives_only_new_connections_the_new_crl(tmp_path: Path) -> None:
    """Mosquitto 2.0's own behaviour, and the reason run-broker.sh restarts it instead."""
    pki = Pki.create(tmp_path / "pki")
    victim, probe = pki.device("f2-00000000000c"), pki.device("f2-00000000000d")
    broker = start_broker(tmp_path / "broker", pki, supervised=False)
    try:
        with Client(broker.port, pki.ca_file, victim) as connected:
            connected.subscribe(f"cmnd/{victim.cn}/#")
            pki.revoke(victim.cn, probe.cn)
            # A new CRL file alone changes nothing: Mosquitto read it at start.
            assert refusal(broker.port, pki.ca_file, probe, ssl.TLSVersion.TLSv1_2) == "accepted"
            assert broker.pid is not None
            os.kill(broker.pid, signal.SIGHUP)
            refused_within(WAIT, broker.port, pki.ca_file, probe, ssl.TLSVersion.TLSv1_2)
            # ...but the revoked client that was connected before is still served.
            with Client(broker.port, pki.ca_file, pki.service("operator")) as operator:
                operator.publish(f"cmnd/{victim.cn}/alarm-mode/J2/siren", b"still served")
            assert connected.wait_for(1) == [
                (f"cmnd/{victim.cn}/alarm-mode/J2/siren", b"still served")
            ]
            assert not connected.disconnected.is_set()
    finally:
        broker.stop()


# --- the configuration ------------------------------------------------------------------------


class ConfiguredBroker(ServerProcess):
    """run-broker.sh on a configuration that `f2pipe broker-config` wrote."""

    name = "mosquitto-cli"

    def __init__(self, directory: Path, port: int, conf: Path) -> None:
        find_binary("mosquitto")
        super().__init__(directory, port)
        self.conf = conf

    def command(self) -> list[str]:
        return supervisor_command(self.conf)


def test_broker_config_command_writes_a_configuration_mosquitto_serves(
    tmp_path: Path, pki: Pki, device_a: Identity
) -> None:
    out, port = tmp_path / "broker", free_port()
    argv = ["broker-config", "--out", str(out), "--port", str(port)]
    argv += ["--ca-dir", pki.settings.ca_dir, "--issued-dir", pki.settings.issued_dir]
    assert cli_main(argv) == 0
    try:
        server = ConfiguredBroker(out, port, out / "mosquitto.conf")
    except MissingBinaryError as exc:
        missing(exc)
    with server, Client(port, pki.ca_file, device_a, protocol=mqtt.MQTTv5) as device:
        # 16: accepted, no subscriber for it.
        assert device.publish(f"tele/{DEVICE_A}/sensor-mode/J3/sensor-1", b"{}") == 16
    # Persistence went where broker-config said: OUT/data unless --data-dir.
    assert (out / "data" / "mosquitto.db").is_file()


def options(config: str) -> list[tuple[str, str]]:
    lines = [line.strip() for line in config.splitlines()]
    return [
        (name, value)
        for name, _, value in (line.partition(" ") for line in lines)
        if name and not name.startswith("#")
    ]


def test_template_has_one_tls_listener_and_no_anonymous_access() -> None:
    config = options(TEMPLATE.read_text())
    names = [name for name, _ in config]
    values = dict(config)

    assert names.count("listener") == 1
    after_listener = names[names.index("listener") :]
    for option in ("cafile", "crlfile", "certfile", "keyfile", "require_certificate"):
        assert option in after_listener
    assert values["listener"] == "8883"
    assert values["require_certificate"] == "true"
    assert values["use_identity_as_username"] == "true"
    assert values["use_username_as_clientid"] == "true"
    assert values["allow_anonymous"] == "false"
    assert values["tls_version"] == "tlsv1.2"
    assert values["persistence"] == "true"
    assert int(values["max_inflight_messages"]) >= 1000
    assert int(values["max_queued_messages"]) >= 1_000_000
    assert int(values["max_queued_bytes"]) > 0


def test_render_puts_every_file_in_the_local_directories(tmp_path: Path) -> None:
    rendered = render(
        TEMPLATE.read_text(),
        ca_dir=tmp_path / "ca",
        issued_dir=tmp_path / "issued",
        config_dir=tmp_path / "conf",
        data_dir=tmp_path / "data",
        port=18883,
        host="127.0.0.1",
        user="root",
    )
    values = dict(options(rendered))

    assert "/mosquitto/" not in "".join(value for _, value in options(rendered))
    assert values["listener"] == "18883 127.0.0.1"
    assert values["cafile"] == f"{tmp_path}/ca/ca.crt"
    assert values["crlfile"] == f"{tmp_path}/ca/crl.pem"
    assert values["certfile"] == f"{tmp_path}/issued/broker.crt"
    assert values["keyfile"] == f"{tmp_path}/issued/broker.key"
    assert values["acl_file"] == f"{tmp_path}/conf/acl"
    assert values["persistence_location"] == f"{tmp_path}/data/"
    assert values["user"] == "root"


def test_render_refuses_a_template_that_lost_a_placeholder(tmp_path: Path) -> None:
    template = TEMPLATE.read_text().replace("/mosquitto/ca/crl.pem", "/etc/crl.pem")

    with pytest.raises(ValueError, match="/mosquitto/ca/"):
        render(
            template.replace("/mosquitto/ca/ca.crt", "/etc/ca.crt"),
            ca_dir=tmp_path,
            issued_dir=tmp_path,
            config_dir=tmp_path,
            data_dir=tmp_path,
        )


def test_write_copies_the_acl_beside_the_configuration(tmp_path: Path) -> None:
    conf = write(tmp_path / "out", ca_dir=tmp_path / "ca", issued_dir=tmp_path / "issued")

    assert (tmp_path / "out" / "acl").read_text() == ACL.read_text()
    assert dict(options(conf.read_text()))["acl_file"] == f"{tmp_path}/out/acl"
