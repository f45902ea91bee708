"""Real servers started on free ports in directories of our own.

The test suite and `f2pipe dev` both use these: PostgreSQL, Redis, Mosquitto and the
Kafka-protocol broker, each a child process we start, wait for and stop.
"""

from f2pipe_devtools.servers.base import (
    MissingBinaryError,
    ServerError,
    ServerProcess,
    free_port,
    port_open,
)
from f2pipe_devtools.servers.kafka import KafkaBroker
from f2pipe_devtools.servers.mosquitto import MosquittoServer
from f2pipe_devtools.servers.postgres import PostgresServer
from f2pipe_devtools.servers.proxy import TcpProxy
from f2pipe_devtools.servers.redis import RedisServer

__all__ = [
    "KafkaBroker",
    "MissingBinaryError",
    "MosquittoServer",
    "PostgresServer",
    "RedisServer",
    "ServerError",
    "ServerProcess",
    "TcpProxy",
    "free_port",
    "port_open",
]
