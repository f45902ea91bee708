"""The harness's own failure paths: a missing binary and a server that dies on start."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from f2pipe_devtools.dev.ports import Ports
from f2pipe_devtools.servers import base
from f2pipe_devtools.servers.base import (
    MissingBinaryError,
    ServerError,
    ServerProcess,
    find_binary,
    free_port,
    port_open,
)


def test_missing_binary_names_the_package_to_install() -> None:
    with pytest.raises(MissingBinaryError) as info:
        find_binary("redis-server-that-does-not-exist")
    assert "apt-get install -y redis-server-that-does-not-exist" in str(info.value)


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_free_ports_are_distinct_and_outside_the_ephemeral_range() -> None:
    # An outgoing connection takes its local port from the ephemeral range: a port chosen
    # there can be taken by any client before the server binds it (a CI failure of the
    # end-to-end test: "could not bind ... Address already in use").
    low, _high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(1024 < port < low for port in ports)


def test_a_dev_stack_port_block_is_free_and_below_the_ephemeral_range() -> None:
    # The end-to-end tests start a whole `dev up` on one base port: the same race as above
    # (another CI failure: PostgreSQL on 57032, inside the range).
    low, _high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = Ports.from_base(Ports.free_base()).as_dict().values()
    assert all(1024 < port < low for port in ports)
    assert not any(port_open("127.0.0.1", port) for port in ports)


def test_a_port_someone_listens_on_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        real = base._rng.randrange
        picks = iter([taken, taken])  # the listener's port comes up first, twice
        monkeypatch.setattr(base._rng, "randrange", lambda a, b: next(picks, None) or real(a, b))
        assert free_port() != taken


class DiesOnStart(ServerProcess):
    name = "dies"

    def command(self) -> list[str]:
        return [sys.executable, "-c", "import sys; print('bad config line 3'); sys.exit(3)"]


def test_a_server_that_exits_on_start_reports_its_log(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match=r"dies exited with 3 on start:\n.*bad config line 3"):
        DiesOnStart(tmp_path).start(timeout=10)


class NeverReady(ServerProcess):
    name = "sleeper"

    def command(self) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_server_that_never_listens_times_out_and_is_stopped(tmp_path: Path) -> None:
    server = NeverReady(tmp_path)
    with pytest.raises(ServerError, match="not ready on port"):
        server.start(timeout=0.5)
    assert not server.running


def test_a_servers_log_is_readable_by_us_only(tmp_path: Path) -> None:
    old = tmp_path / "dies.log"
    old.write_text("from an older run\n")
    old.chmod(0o644)
    with pytest.raises(ServerError):
        DiesOnStart(tmp_path).start(timeout=10)
    assert old.stat().st_mode & 0o777 == 0o600
    assert old.read_text().startswith("from an older run\n")  # appended, not replaced
