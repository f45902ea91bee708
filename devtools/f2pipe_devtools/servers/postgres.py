"""PostgreSQL in a data directory of our own: initdb once, then start and stop at will.

PostgreSQL refuses to run as root, so when we are root the server runs as the `postgres`
system user (created by Debian's package), and owns its data directory.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import subprocess
from pathlib import Path

import psycopg

from f2pipe_devtools.servers.base import MissingBinaryError, ServerError, ServerProcess, apt_hint

SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def postgres_bin_dir() -> Path:
    """The newest installed PostgreSQL's bin directory (Debian puts it outside PATH)."""
    override = os.environ.get("F2PIPE_PG_BIN")
    if override:
        return Path(override)
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        raise MissingBinaryError("postgres", apt_hint("postgres")) from None
    bindir = Path(out.stdout.strip())
    if not (bindir / "postgres").exists():
        raise MissingBinaryError("postgres", apt_hint("postgres"))
    return bindir


class PostgresServer(ServerProcess):
    name = "postgres"

    def __init__(self, directory: Path, port: int | None = None, *, durable: bool = False) -> None:
        super().__init__(directory, port)
        self.bin_dir = postgres_bin_dir()
        self.data_dir = directory / "data"
        self.socket_dir = directory / "sock"
        # Tests trade durability for speed; a development stack keeps fsync on.
        self.durable = durable
        self._user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def popen_kwargs(self) -> dict[str, object]:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def prepare(self) -> None:
        for path in (self.directory, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
            self._chown(path)
        self.log_path.touch()
        self._chown(self.log_path)
        if (self.data_dir / "PG_VERSION").exists():
            return
        result = subprocess.run(  # type: ignore[call-overload]
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            check=False,
            **self.popen_kwargs(),
        )
        if result.returncode != 0:
            raise ServerError(f"initdb failed:\n{result.stdout}\n{result.stderr}")

    def command(self) -> list[str]:
        cmd = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            f"unix_socket_directories={self.socket_dir}",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=128MB",
        ]
        if not self.durable:
            cmd += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        return cmd

    def is_ready(self) -> bool:
        try:
            with psycopg.connect(self.conninfo(), connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGINT) -> None:
        # SIGINT is PostgreSQL's "fast shutdown": roll back sessions, checkpoint, exit.
        super().stop(timeout, sig)

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user=postgres dbname={dbname}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its conninfo."""
        if not SAFE_NAME.match(name):
            raise ValueError(f"unsafe database name {name!r}")
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.conninfo(name)
