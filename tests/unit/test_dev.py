"""`f2pipe dev`'s pieces that need no server: ports, the status line, prefixed output."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from f2pipe_devtools.dev import probes, status, supervise
from f2pipe_devtools.dev.options import DEFAULT_BASE
from f2pipe_devtools.dev.ports import OFFSETS, Ports
from f2pipe_devtools.dev.procs import Console, Service, open_private_log
from f2pipe_devtools.dev.stack import DevOptions, DevStack
from f2pipe_devtools.dev.supervise import SupervisedServer
from f2pipe_devtools.servers import ServerProcess, port_open


def test_ports_follow_the_base_and_miss_the_standard_ones() -> None:
    ports = Ports.from_base(DEFAULT_BASE)
    assert ports.postgres == DEFAULT_BASE + OFFSETS["postgres"]
    assert len(set(ports.as_dict().values())) == len(OFFSETS)
    standard = {5432, 6379, 9092, 1883, 8883, 8080, 9101, 9103, 9104, 6066, 3000, 9090}
    assert not standard & set(ports.as_dict().values())
    with pytest.raises(ValueError, match="--base-port"):
        Ports.from_base(80)


def test_a_taken_port_stops_up_naming_it(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        base = port - OFFSETS["redis"]
        result = subprocess.run(
            [sys.executable, "-m", "f2pipe", "dev", "up", "--state-dir", str(tmp_path / "s"),
             "--base-port", str(base)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 2
    assert f"redis {port}" in result.stderr
    assert "--base-port" in result.stderr
    assert not (tmp_path / "s" / "state.json").exists()


def test_status_and_down_without_a_stack(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "f2pipe", "dev"]
    st = subprocess.run([*run, "status", "--state-dir", str(tmp_path)],
                        capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert st.returncode == 3
    assert "not running" in st.stdout
    down = subprocess.run([*run, "down", "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert down.returncode == 0
    assert "not running" in down.stdout


def test_rates_between_samples_and_a_restarted_counter() -> None:
    before = status.Sample(10.0, {"in": 100.0, "written": 1000.0})
    after = status.Sample(12.0, {"in": 300.0, "written": 10.0})  # the sink restarted
    assert status.rates(before, after) == {"in": 100.0, "written": None}
    gone = status.Sample(14.0, {"in": None, "written": 50.0})
    assert status.rates(after, gone) == {"in": None, "written": 20.0}


def test_status_line_says_what_is_unknown_and_unhealthy() -> None:
    line = status.status_line({"in": 1234.4, "written": None}, {"raw": 3, "processed": None},
                              0, ["sink"])  # fmt: skip
    assert line == (
        "in 1,234 msg/s | written ? | lag raw 3 rec processed ? | dead letters 0 | UNHEALTHY: sink"
    )
    assert status.status_line({}, {}, None, []).endswith("| all healthy")


def test_console_prefixes_every_line_with_the_process_name() -> None:
    out = io.StringIO()
    console = Console(out, width=8)
    console.line("bridge", "started\n")
    console.line("sink", "x")
    assert out.getvalue() == "bridge  | started\nsink    | x\n"


def test_a_service_that_dies_is_restarted_until_it_keeps_dying(tmp_path: Path) -> None:
    out = io.StringIO()
    service = Service("quitter", [sys.executable, "-c", "print('bye')"], {}, tmp_path / "q.log",
                      Console(out))  # fmt: skip
    service.start()
    assert service.proc is not None
    service.proc.wait(10)
    restarts = 0
    while service.restart_if_dead():
        restarts += 1
        assert service.proc is not None
        service.proc.wait(10)
    assert restarts == 4  # the fifth exit within a minute ends it
    assert "quitter keeps exiting" in out.getvalue()
    assert "quitter | bye" in out.getvalue().replace("quitter   |", "quitter |")


def test_the_stack_settings_point_every_service_at_the_local_servers(tmp_path: Path) -> None:
    ports = Ports.from_base(40000)
    env = DevStack(DevOptions(tmp_path / "dev", ports), Console(io.StringIO())).env()
    assert env["POSTGRES_PORT"] == str(ports.postgres)
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{ports.kafka}"
    assert env["MQTT_BROKER_PORT"] == str(ports.mqtt)
    assert env["CA_DIR"] == str((tmp_path / "dev" / "ca").resolve())
    token = tmp_path / "dev" / "admin-token"
    assert env["CERTGEN_ADMIN_TOKEN"] == token.read_text()
    assert token.stat().st_mode & 0o777 == 0o600
    again = DevStack(DevOptions(tmp_path / "dev", ports), Console(io.StringIO())).env()
    assert again["CERTGEN_ADMIN_TOKEN"] == env["CERTGEN_ADMIN_TOKEN"]  # kept across runs
    # certgen serves HTTPS only: its health is asked over TLS, trusting the stack's CA alone.
    stack = DevStack(DevOptions(tmp_path / "dev", ports), Console(io.StringIO()))
    certgen = stack.service("certgen")
    assert certgen.health_url == f"https://127.0.0.1:{ports.certgen}/healthz"
    assert certgen.ca_file == stack.ca_dir / "ca.crt"
    assert stack.service("sink").health_url == f"http://127.0.0.1:{ports.sink}/healthz"
    # The api too, with the certificate certgen's bootstrap issues it, on its own port.
    api = stack.service("api")
    assert api.health_url == f"https://127.0.0.1:{ports.api}/healthz"
    assert api.ca_file == stack.ca_dir / "ca.crt"
    assert api.argv[-4:] == ["--host", "127.0.0.1", "--port", str(ports.api)]
    assert api.env["API_TLS_CERT_FILE"] == str(stack.issued_dir / "api.crt")
    # Commands go out as the api's own MQTT identity, to the stack's broker.
    assert api.env["API_MQTT_CERT_FILE"] == str(stack.issued_dir / "api-commands.crt")
    assert api.env["API_MQTT_KEY_FILE"] == str(stack.issued_dir / "api-commands.key")
    assert api.env["MQTT_CA_FILE"] == str(stack.ca_dir / "ca.crt")
    assert "METRICS_PORT" not in api.env  # it serves /metrics itself


def test_service_logs_are_this_user_s_only(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    (logs / "old.log").write_text("from before\n")
    (logs / "old.log").chmod(0o644)
    for name in ("talker", "old"):
        service = Service(name, [sys.executable, "-c", "print('hi')"], {}, logs / f"{name}.log",
                          Console(io.StringIO()))  # fmt: skip
        service.start()
        assert service.proc is not None
        service.proc.wait(10)
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700  # narrowed, though it existed
    for name in ("talker", "old"):
        assert stat.S_IMODE((logs / f"{name}.log").stat().st_mode) == 0o600, name


def test_the_detached_stack_s_dev_log_is_created_0600(tmp_path: Path) -> None:
    path = tmp_path / "dev.log"
    with open_private_log(path) as log:  # what `f2pipe dev up --detach` writes to
        log.write(b"x\n")
    with open_private_log(path) as log:
        log.write(b"y\n")
    assert path.read_bytes() == b"x\ny\n"  # appended
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_health_checks_reach_certgen_over_https_trusting_the_stack_s_ca(tmp_path: Path) -> None:
    import http.server
    import ssl
    import threading

    from f2pipe_certgen.ca import CertificateAuthority
    from f2pipe_devtools.dev import http as dev_http
    from f2pipe_shared.settings import CaSettings

    ca_dir, issued = tmp_path / "ca", tmp_path / "issued"
    CertificateAuthority.bootstrap(
        CaSettings(ca_dir=str(ca_dir), issued_dir=str(issued)), certgen_names=["certgen"]
    )

    class Healthz(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(issued / "certgen.crt", issued / "certgen.key")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}/healthz"
    try:
        assert dev_http.get(url, ca_file=ca_dir / "ca.crt") == (200, "ok")
        assert dev_http.ok(url, ca_file=ca_dir / "ca.crt")
        assert not dev_http.ok(url)  # the system's CAs do not know ours
        assert not dev_http.ok(url, ca_file=tmp_path / "missing.crt")  # not yet bootstrapped
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ValueError, match="http"):
        dev_http.get("ftp://127.0.0.1/healthz")


# --- servers supervised: restarts, probes, `dev status` words, `dev down`'s leftovers ----------


class Listener(ServerProcess):
    """A real process listening on a port: what the supervisor sees of any server."""

    name = "listener"

    def command(self) -> list[str]:
        code = ("import socket, time; s = socket.socket(); "
                "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                f"s.bind(('127.0.0.1', {self.port})); s.listen(); time.sleep(600)")  # fmt: skip
        return [sys.executable, "-c", code]


def _tick_until(supervised: SupervisedServer, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not supervised.tick():
        assert time.monotonic() < deadline, "not restarted"
        time.sleep(0.05)


def test_a_dead_server_is_restarted_on_its_port_with_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervise, "BACKOFF", (0.2, 0.4, 0.8))
    out = io.StringIO()
    server = Listener(tmp_path / "listener").start()
    supervised = SupervisedServer(server, Console(out))
    try:
        first = server.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        server._proc.wait(5)  # type: ignore[union-attr]
        assert not supervised.tick()  # noticed, announced, not yet restarted
        assert supervised.down
        assert "listener died (signal 9); restarting in 0.2 s" in out.getvalue()
        _tick_until(supervised)
        assert server.running
        assert server.pid != first
        assert port_open("127.0.0.1", server.port)
        assert (supervised.restarts, supervised.down) == (1, False)
        assert f"listener restarted on port {server.port}" in out.getvalue()
        # Dead again at once: the next wait is longer; and a stranger holding the port is
        # named, not fought with, until it lets go.
        second = server.pid
        assert second is not None
        os.kill(second, signal.SIGKILL)
        server._proc.wait(5)  # type: ignore[union-attr]
        with socket.socket() as stranger:
            stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            stranger.bind(("127.0.0.1", server.port))
            stranger.listen()
            supervised.tick()
            assert "listener died (signal 9); restarting in 0.4 s" in out.getvalue()
            time.sleep(0.5)
            assert not supervised.tick()
            assert f"is held by pid {os.getpid()}" in out.getvalue()
            assert supervised.down
        _tick_until(supervised)
        assert supervised.restarts == 2
        assert supervised.state()["deaths"] == supervised.deaths
        assert len(supervised.deaths) == 2
    finally:
        server.stop()


def test_a_planned_outage_keeps_the_server_down_for_its_time_then_restarts_it(
    tmp_path: Path,
) -> None:
    out = io.StringIO()
    server = Listener(tmp_path / "listener").start()
    supervised = SupervisedServer(server, Console(out))
    try:
        supervised.stop_for(0.6)
        stopped = time.monotonic()
        assert not server.running
        assert not port_open("127.0.0.1", server.port)
        assert supervised.down
        assert "listener stopped for 0.6 s (on request)" in out.getvalue()
        while time.monotonic() - stopped < 0.5:
            assert not supervised.tick()  # not before its time, and not counted as a death
            time.sleep(0.05)
        _tick_until(supervised)
        assert time.monotonic() - stopped >= 0.6
        assert port_open("127.0.0.1", server.port)
        assert (supervised.restarts, supervised.deaths) == (1, [])
    finally:
        server.stop()


def test_the_port_holder_is_named() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        holder = probes.port_holder(port)
        assert holder is not None
        assert holder[0] == os.getpid()
        assert f"pid {os.getpid()} (" in probes.describe_holder(port)
    assert probes.port_holder(port) is None
    # A port that listens but never answers is no Redis: the probe asks it something.
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        assert not probes.redis(mute.getsockname()[1], "processor", "x")


def test_dev_status_words_for_a_restarted_server_and_a_kafka_that_lost_its_contents() -> None:
    assert status.kafka_lost([]) is None
    assert status.kafka_lost(["21:40:12"]) == (
        "the local Kafka lost what it held at 21:40:12: readings published before then and "
        "not yet processed are gone"
    )
    assert "at 22:00:01 (2 times since `dev up`)" in (status.kafka_lost(["1", "22:00:01"]) or "")
    assert status.restart_note({"deaths": [], "restarts": 0}) == ""
    note = {"deaths": ["21:40:12"], "restarts": 1, "last_exit": "signal 9", "down": False}
    assert status.restart_note(note) == " (died 1x, last at 21:40:12: signal 9; restarted 1x)"
    assert status.restart_note({**note, "down": True}).endswith(", restart pending)")


def test_down_stops_what_a_killed_dev_up_left_running(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # the `dev up` that wrote the state, killed
    left = subprocess.Popen(["sleep", "600"], start_new_session=True)
    other = subprocess.Popen(["sleep", "600"], start_new_session=True)
    started = probes.start_time(left.pid)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        state = {
            "pid": gone.pid,
            "ports": {"redis": held.getsockname()[1]},
            "pids": {"sink": other.pid},
            "started": {"sink": 1},  # not its start time: a reused PID, never signalled
            "servers": {"redis": {"pid": left.pid, "started": started}},
        }
        (tmp_path / "state.json").write_text(json.dumps(state))
        down = subprocess.run(
            [sys.executable, "-m", "f2pipe", "dev", "down", "--state-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    try:
        assert left.wait(10) == -signal.SIGTERM
        assert other.poll() is None
        assert down.returncode == 1, down.stdout + down.stderr  # the port is still held
        assert f"stopping redis (pid {left.pid})" in down.stdout
        assert f"is still held by pid {os.getpid()}" in down.stderr
        assert not (tmp_path / "state.json").exists()
    finally:
        for proc in (left, other):
            proc.kill()
            proc.wait()


def test_further_instances_get_ports_of_their_own_clear_of_the_stack_s() -> None:
    ports = Ports.from_base(DEFAULT_BASE, instances=3)
    assert ports.of("bridge-2") == DEFAULT_BASE + 101
    assert ports.of("processor-2") == DEFAULT_BASE + 102
    assert ports.of("sink-3") == DEFAULT_BASE + 113
    assert len(set(ports.as_dict().values())) == len(OFFSETS) + 6  # none shared
    assert Ports.from_base(DEFAULT_BASE).as_dict() == {  # one instance: as before
        name: DEFAULT_BASE + offset for name, offset in OFFSETS.items()
    }
    free = Ports.free(instances=2)
    assert set(free.extra) == {"bridge-2", "processor-2", "sink-2"}
    with pytest.raises(ValueError, match="instances per stage"):
        Ports.free(instances=10)


def test_the_pipeline_starts_at_once_and_the_simulator_after_it() -> None:
    options = DevOptions(Path("x"), Ports.from_base(DEFAULT_BASE, 2), instances=2)
    assert options.start_waves() == [
        ["certgen", "api", "sink", "sink-2", "processor", "processor-2", "bridge", "bridge-2"],
        ["simulator"],
    ]
    without = DevOptions(Path("x"), Ports.from_base(DEFAULT_BASE), simulator=False)
    assert without.start_waves() == [["certgen", "api", "sink", "processor", "bridge"]]


def test_a_second_bridge_has_its_own_identity_and_both_share_one_group(tmp_path: Path) -> None:
    ports = Ports.from_base(40000, instances=2)
    stack = DevStack(DevOptions(tmp_path / "dev", ports, instances=2), Console(io.StringIO()))
    first, second = stack.service("bridge"), stack.service("bridge-2")
    assert first.argv == second.argv  # the same command: `f2pipe bridge`
    assert first.env["BRIDGE_SHARED_GROUP"] == second.env["BRIDGE_SHARED_GROUP"] == "f2pipe"
    assert first.env["BRIDGE_CERT_FILE"] == str(stack.issued_dir / "bridge.crt")
    assert second.env["BRIDGE_CERT_FILE"] == str(stack.issued_dir / "bridge-2.crt")
    assert second.env["BRIDGE_KEY_FILE"] == str(stack.issued_dir / "bridge-2.key")
    assert second.env["METRICS_PORT"] == str(ports.of("bridge-2"))
    assert second.log_path.name == "bridge-2.log"
    # One Faust group, one data directory each; one sink group, the sink's database login.
    worker, other = stack.service("processor"), stack.service("processor-2")
    assert worker.env.get("PROCESSOR_APP_ID") == other.env.get("PROCESSOR_APP_ID")
    assert worker.env["PROCESSOR_DATA_DIR"] != other.env["PROCESSOR_DATA_DIR"]
    sink = stack.service("sink-2")
    assert sink.argv[-1] == "sink"
    assert sink.env["POSTGRES_USER"] == "sink"
    assert sink.health_url == f"http://127.0.0.1:{ports.of('sink-2')}/healthz"
    # One bridge alone subscribes plainly (Mosquitto 2.0 keeps that over its own restart) and
    # drops the group's filters a larger stack left in its session.
    single = DevStack(DevOptions(tmp_path / "one", Ports.from_base(40000)), Console(io.StringIO()))
    env = single.service("bridge").env
    assert "BRIDGE_SHARED_GROUP" not in env
    assert env["BRIDGE_FORMER_GROUP"] == "f2pipe"


def test_bridges_beyond_the_instances_that_have_an_identity_are_the_departed(
    tmp_path: Path,
) -> None:
    stack = DevStack(DevOptions(tmp_path / "dev", Ports.from_base(40000), instances=2),
                     Console(io.StringIO()))  # fmt: skip
    stack.issued_dir.mkdir(parents=True)
    for stem, exts in [("bridge-2", ("crt", "key")), ("bridge-3", ("crt", "key")),
                       ("bridge-4", ("crt",)), ("bridge-6", ("crt", "key"))]:  # fmt: skip
        for ext in exts:
            (stack.issued_dir / f"{stem}.{ext}").write_text("x")
    # Bridge 2 is one of the two asked for; 4 has no key, so it never ran.
    assert stack.departed_bridges() == [3, 6]


def test_the_acl_gives_each_further_bridge_what_it_gives_the_first() -> None:
    from f2pipe_devtools.dev import instances

    assert instances.acl_blocks(1) == ""
    blocks = instances.acl_blocks(3)
    for cn in ("svc-bridge-2", "svc-bridge-3"):
        block = blocks.split(f"user {cn}\n")[1].split("\n\n")[0]
        assert block.splitlines()[:2] == ["topic read stat/#", "topic read tele/#"]
    assert instances.parse("processor-2") == ("processor", 2)
    assert instances.parse("api") == ("api", 1)
