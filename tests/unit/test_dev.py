"""`f2pipe dev`'s pieces that need no server: ports, the status line, prefixed output."""

from __future__ import annotations

import io
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from f2pipe_devtools.dev import status
from f2pipe_devtools.dev.options import DEFAULT_BASE
from f2pipe_devtools.dev.ports import OFFSETS, Ports
from f2pipe_devtools.dev.procs import Console, Service, open_private_log
from f2pipe_devtools.dev.stack import DevOptions, DevStack


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
