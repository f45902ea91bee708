"""Is a server of the local stack answering? A real exchange with each, not a PID or a port.

A process can be alive and useless (stopped, hung, or a stranger holding its port): the
supervisor's status line and `f2pipe dev status` ask each server something it must answer.
The same probes serve both, from what the state directory holds (ports, secrets, the CA).
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

HOST = "127.0.0.1"
TIMEOUT = 2.0
SERVERS = ("postgres", "redis", "kafka", "mosquitto")
# The server's port in `Ports` (Mosquitto's is the MQTT one).
PORT_NAMES = {"postgres": "postgres", "redis": "redis", "kafka": "kafka", "mosquitto": "mqtt"}
# The broker probes' own identities (CN svc-<name>, files <name>.crt/.key among the issued):
# `dev up`'s standing session and `dev status`'s one-shot one. Two, because the broker takes
# the CN as the client id: one would end the other's session.
WATCH_IDENTITY = "dev-watch"
STATUS_IDENTITY = "dev-status"
KEEPALIVE_S = 5  # a hung broker shows within ~1.5 keepalives


def postgres(port: int, passfile: Path, dbname: str = "postgres") -> bool:
    """A login over TCP (the superuser's password from the harness's passfile) and SELECT 1."""
    conninfo = f"host={HOST} port={port} user=postgres dbname={dbname} passfile={passfile}"
    try:
        with psycopg.connect(conninfo, connect_timeout=int(TIMEOUT)) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.Error:
        return False


def _resp(*words: str) -> bytes:
    """One Redis command in RESP, the protocol's own framing (no client library needed)."""
    out = [f"*{len(words)}\r\n".encode()]
    for word in words:
        raw = word.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def redis(port: int, user: str, password: str) -> bool:
    """AUTH as `user`, then PING: +OK and +PONG."""
    try:
        with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
            sock.sendall(_resp("AUTH", user, password) + _resp("PING"))
            data = b""
            while data.count(b"\r\n") < 2:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return False
    return data.split(b"\r\n")[:2] == [b"+OK", b"+PONG"]


def kafka(bootstrap: str) -> bool:
    """The broker's metadata (its topics) within the timeout."""
    # log_level 0: librdkafka would print every refused connection on the console.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        admin.list_topics(timeout=TIMEOUT)
    except KafkaException:
        return False
    return True


def mqtt_tls(port: int, ca_file: Path) -> bool:
    """A TLS handshake in which the broker proves itself with a certificate of the stack's CA.

    Mosquitto asks for a client certificate we do not send: with TLS 1.3 the handshake
    completes on our side first; with 1.2 the broker answers with an alert after its own
    certificate was verified. Either way only our broker gets that far.
    """
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except OSError:
        return False  # no CA yet
    context.check_hostname = False  # its certificate names the service, not 127.0.0.1
    try:
        with (
            socket.create_connection((HOST, port), timeout=TIMEOUT) as raw,
            context.wrap_socket(raw) as tls,
        ):
            return tls.version() is not None
    except ssl.SSLCertVerificationError:
        return False
    except ssl.SSLError as exc:
        return "ALERT" in str(exc.reason or "").upper()  # refused our missing certificate
    except OSError:
        return False


class MqttSession:
    """An MQTT session of one of the probe identities: connected means the broker took our
    certificate and answered CONNECT (and, standing, every PINGREQ since). paho's thread
    connects, keeps alive and reconnects (1-5 s apart) after a broker restart.

    Held for a whole `dev up`, it is the status line's broker probe: the earlier one, a TLS
    handshake without a certificate every few seconds, cost three lines of Mosquitto's log
    each ("peer did not return a certificate", "Protocol error"), an alarm in every
    `make dev`; a session logs its connect once, and once more after a restart."""

    def __init__(self, port: int, ca_file: Path, cert: Path, key: Path) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.tls_set(ca_certs=str(ca_file), certfile=str(cert), keyfile=str(key))
        self.client.reconnect_delay_set(1, 5)
        self.client.connect_async(HOST, port, keepalive=KEEPALIVE_S)
        self.client.loop_start()

    def __call__(self) -> bool:
        return self.client.is_connected()

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def identity_files(root: Path, name: str) -> tuple[Path, Path]:
    """An identity's certificate and key among the stack's issued ones (DevStack.issued_dir)."""
    issued = root / "issued"
    return issued / f"{name}.crt", issued / f"{name}.key"


def mqtt_session(root: Path, port: int, name: str) -> MqttSession | None:
    """A session of the probe identity ``name``; None when the state directory has none (a
    stack started before they existed: ``mqtt_tls`` then)."""
    cert, key = identity_files(root, name)
    if not (cert.exists() and key.exists()):
        return None
    return MqttSession(port, root / "ca" / "ca.crt", cert, key)


def mqtt_once(root: Path, port: int) -> bool:
    """`dev status`'s broker probe: CONNECT as svc-dev-status, CONNACK, DISCONNECT."""
    session = mqtt_session(root, port, STATUS_IDENTITY)
    if session is None:
        return mqtt_tls(port, root / "ca" / "ca.crt")
    try:
        return session.wait(TIMEOUT)
    finally:
        session.close()


def probes(root: Path, ports: dict[str, int]) -> dict[str, Callable[[], bool]]:
    """Each server's one-shot probe, from the state directory `root` and the stack's ports."""
    secret = (root / "redis-processor-password").read_text().strip()
    return {
        "postgres": lambda: postgres(ports["postgres"], root / "postgres" / "pgpass"),
        "redis": lambda: redis(ports["redis"], "processor", secret),
        "kafka": lambda: kafka(f"{HOST}:{ports['kafka']}"),
        "mosquitto": lambda: mqtt_once(root, ports["mqtt"]),
    }


# --- who holds a port ------------------------------------------------------------------------


def port_holder(port: int) -> tuple[int, str] | None:
    """The process listening on `port` (pid, command line), when this user may see it."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        return int(entry.name), command_line(int(entry.name))
    return None


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(inode)
    return inodes


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() or "?"


def describe_holder(port: int) -> str:
    holder = port_holder(port)
    if holder is None:
        return "a process this user cannot see (another user's?)"
    pid, cmd = holder
    return f"pid {pid} ({cmd[:80]})"


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot): a PID reused by another process differs.
    None when it does not run (gone, or exited and not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22, counted after the command name, which may itself hold spaces and parentheses.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # exited, not yet reaped by its parent: gone all the same
        return None
    return int(fields[19])
