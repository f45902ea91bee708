"""Redis without persistence: a cache in front of PostgreSQL loses nothing by forgetting."""

from __future__ import annotations

from pathlib import Path

from f2pipe_devtools.servers.base import ServerProcess, find_binary


class RedisServer(ServerProcess):
    name = "redis"

    def __init__(self, directory: Path, port: int | None = None) -> None:
        super().__init__(directory, port)
        self.binary = find_binary("redis-server")

    def command(self) -> list[str]:
        return [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--loglevel",
            "warning",
        ]

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"
