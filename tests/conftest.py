"""Real servers for the test suite, started once per session on free ports.

PostgreSQL, Redis, Mosquitto and the Kafka-protocol broker run as child processes in a
temporary directory. A missing binary skips the tests that need it on a developer's
machine, and fails them when CI=true: CI must never pass by skipping.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from f2pipe_devtools.servers import (
    KafkaBroker,
    MissingBinaryError,
    MosquittoServer,
    PostgresServer,
    RedisServer,
    ServerProcess,
)

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(exc: MissingBinaryError) -> None:
    if IN_CI:
        pytest.fail(f"CI=true and a server binary is missing: {exc}", pytrace=False)
    pytest.skip(str(exc))


@pytest.fixture(scope="session")
def servers_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: that lives under a 0700 directory the `postgres` user
    # (PostgreSQL's server runs as it when we are root) cannot enter.
    path = Path(tempfile.mkdtemp(prefix="f2pipe-servers-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


S = TypeVar("S", bound=ServerProcess)


def running(start: Callable[[], S]) -> Iterator[S]:
    """Start a server for the session's tests, or skip/fail them when its binary is missing."""
    try:
        server = start()
    except MissingBinaryError as exc:
        missing(exc)
    with server:
        yield server


# The TimescaleDB build `make setup` installs (scripts/setup-timescaledb.sh).
TIMESCALEDB_TARBALLS = sorted(
    (Path(__file__).resolve().parents[1].parent / "shared" / "timescaledb").glob(
        "timescaledb-*-pg15-*.tar.gz"
    )
)


@pytest.fixture(scope="session")
def postgres_server(servers_dir: Path) -> Iterator[PostgresServer]:
    """PostgreSQL with TimescaleDB preloaded when it is installed (F2PIPE_TIMESCALEDB=off:
    plain PostgreSQL, the second pass of `make test`)."""
    for server in running(lambda: PostgresServer(servers_dir / "postgres")):
        wanted_off = os.environ.get("F2PIPE_TIMESCALEDB", "auto").lower() in {"off", "0", "false"}
        if IN_CI and TIMESCALEDB_TARBALLS and not wanted_off and not server.timescaledb:
            pytest.fail(
                "CI=true, ../shared/timescaledb/ holds TimescaleDB, but it is not installed: "
                "run `make setup` as root",
                pytrace=False,
            )
        yield server


@pytest.fixture(scope="session")
def pg_engine(postgres_server: PostgresServer) -> str:
    """`timescaledb` or `postgres`: the storage engine this session's databases get."""
    return "timescaledb" if postgres_server.timescaledb else "postgres"


@pytest.fixture(autouse=True)
def _only_on_its_engine(request: pytest.FixtureRequest) -> None:
    """`@pytest.mark.engine("postgres")`: a test of one engine's branch, skipped on the other
    (the other pass of `make test` runs it)."""
    marker = request.node.get_closest_marker("engine")
    if marker is None:
        return
    engine = request.getfixturevalue("pg_engine")
    if engine != marker.args[0]:
        pytest.skip(f"a test of the {marker.args[0]} branch; this pass runs on {engine}")


_db_numbers = itertools.count(1)


@pytest.fixture
def pg_conninfo(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for one test, dropped after it: with TimescaleDB each database
    keeps a job scheduler in one of a few background workers."""
    name = f"test_{os.getpid()}_{next(_db_numbers)}"
    yield postgres_server.create_database(name)
    postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def redis_server(servers_dir: Path) -> Iterator[RedisServer]:
    yield from running(lambda: RedisServer(servers_dir / "redis"))


@pytest.fixture(scope="session")
def mosquitto_server(servers_dir: Path) -> Iterator[MosquittoServer]:
    """A plain loopback broker for tests of our MQTT plumbing; TLS tests start their own."""
    yield from running(lambda: MosquittoServer(servers_dir / "mosquitto", allow_anonymous=True))


@pytest.fixture(scope="session")
def kafka_bootstrap(servers_dir: Path) -> Iterator[str]:
    """bootstrap.servers of the Kafka-protocol broker: ours, or KAFKA_BOOTSTRAP_SERVERS."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    for broker in running(lambda: KafkaBroker(servers_dir / "kafka")):
        yield broker.bootstrap_servers
