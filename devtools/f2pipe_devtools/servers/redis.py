"""Redis without persistence: a cache in front of PostgreSQL loses nothing by forgetting.

Nothing is open without a password: the `default` user (the harness's own, for tests and
set-up) has a random one, and each `users` entry becomes an ACL user, e.g. the processor's,
which may run only the commands its cache uses on its own keys (`processor_acl`).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path

from f2pipe_devtools.servers.base import ServerProcess, find_binary, write_private

# The commands the processor's cache runs (f2pipe_processor/resolver.py RedisCache), and the
# connection commands a client needs (AUTH, HELLO, PING, CLIENT SETINFO…). docker-compose.yml
# grants the same (tests/unit/test_compose.py keeps the two equal).
PROCESSOR_COMMANDS = "-@all +@connection +hmget +hset +expire +mget +set +unlink +scan"


def processor_acl(password: str, prefix: str = "f2pipe:processor:") -> list[str]:
    """ACL rules of the processor's Redis user: its commands on keys under `prefix`."""
    return ["on", f">{password}", f"~{prefix}*", "resetchannels", *PROCESSOR_COMMANDS.split()]


class RedisServer(ServerProcess):
    name = "redis"

    def __init__(
        self, directory: Path, port: int | None = None, *, password: str | None = None,
        users: Mapping[str, list[str]] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(directory, port)
        self.binary = find_binary("redis-server")
        self.password = password or secrets.token_hex(16)
        self.users = dict(users or {})

    @property
    def acl_path(self) -> Path:
        return self.directory / "users.acl"

    def prepare(self) -> None:
        # A file, 0600, not the command line: `ps` shows a command line to every local user.
        lines = [f"user default on >{self.password} ~* &* +@all"]
        lines += [f"user {name} {' '.join(rules)}" for name, rules in self.users.items()]
        self.directory.mkdir(parents=True, exist_ok=True)
        write_private(self.acl_path, "\n".join(lines) + "\n")

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
            "--aclfile",
            str(self.acl_path),
        ]

    @property
    def url(self) -> str:
        """The `default` user's URL (tests and set-up)."""
        return f"redis://:{self.password}@{self.host}:{self.port}/0"
