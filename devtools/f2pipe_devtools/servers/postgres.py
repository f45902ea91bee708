"""PostgreSQL in a data directory of our own: initdb once, then start and stop at will.

PostgreSQL refuses to run as root, so when we are root the server runs as the `postgres`
system user (created by Debian's package), and owns its data directory.

Authentication is the production kind: over TCP every login needs a password, checked with
SCRAM-SHA-256. The superuser `postgres` gets a random password, made once and kept (mode
0600) in the server's directory; `conninfo()` carries it, and `passfile` is a libpq password
file that holds it (`passfile=<path>` in a conninfo: a psql line that shows no secret). The
server's Unix socket, in a 0700 directory of its own with `unix_socket_permissions=0700`,
admits only the operating-system user that runs this harness (peer authentication, mapped to
`postgres`): it is how the harness sets that password after each start, also on a data
directory made before passwords existed.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import subprocess
from pathlib import Path
from typing import Any, Self

import psycopg
from psycopg import sql

from f2pipe_devtools.servers.base import (
    MissingBinaryError,
    ServerError,
    ServerProcess,
    apt_hint,
    read_or_create_secret,
    write_private,
)

SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
SUPERUSER = "postgres"

# Rewritten before every start, so a data directory made with `initdb --auth=trust` (before
# this harness used passwords) is brought to the same rules.
PG_HBA = """\
# Written by f2pipe_devtools.servers.postgres before every start; edits are lost.
# TYPE  DATABASE  USER      ADDRESS       METHOD
local   all       postgres                peer map=harness
host    all       all       127.0.0.1/32  scram-sha-256
host    all       all       ::1/128       scram-sha-256
"""


def scram_verifier(conn: psycopg.Connection[Any], user: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier of ``password``, computed here by libpq: the server stores
    it as given and never sees (or logs) the password itself."""
    verifier = conn.pgconn.encrypt_password(password.encode(), user.encode(), b"scram-sha-256")
    return verifier.decode("ascii")


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


def timescaledb_installed(bin_dir: Path) -> bool:
    """TimescaleDB's library and extension files are in this PostgreSQL's directories
    (`make setup` installs them from ../shared/timescaledb/, scripts/setup-timescaledb.sh)."""
    major = bin_dir.parent.name
    library = bin_dir.parent / "lib" / "timescaledb.so"
    control = Path("/usr/share/postgresql") / major / "extension" / "timescaledb.control"
    return library.exists() and control.exists() and _server_version(bin_dir) >= MIN_SERVER


# The TimescaleDB build `make setup` installs needs symbols PostgreSQL 15.18 lacks (setup upgrades).
MIN_SERVER = (15, 20)


def _server_version(bin_dir: Path) -> tuple[int, int]:
    command = [str(bin_dir / "postgres"), "--version"]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    found = re.search(r"(\d+)\.(\d+)", out.stdout)
    return (int(found[1]), int(found[2])) if found else (0, 0)


def timescaledb_wanted(bin_dir: Path) -> bool:
    """F2PIPE_TIMESCALEDB: `on` (fail without it), `off`, or `auto` (the default): whether
    it is installed."""
    wanted = os.environ.get("F2PIPE_TIMESCALEDB", "auto").strip().lower()
    if wanted in ("off", "0", "false", "no"):
        return False
    if wanted in ("on", "1", "true", "yes"):
        if not timescaledb_installed(bin_dir):
            raise MissingBinaryError(
                "timescaledb", "run `make setup` as root (../shared/timescaledb/)"
            )
        return True
    return timescaledb_installed(bin_dir)


class PostgresServer(ServerProcess):
    name = "postgres"

    def __init__(
        self, directory: Path, port: int | None = None, *, durable: bool = False,
        timescaledb: bool | None = None,
    ) -> None:  # fmt: skip
        """`timescaledb`: preload it (None: F2PIPE_TIMESCALEDB, by default when installed)."""
        super().__init__(directory, port)
        self.bin_dir = postgres_bin_dir()
        self.timescaledb = timescaledb_wanted(self.bin_dir) if timescaledb is None else timescaledb
        self.data_dir = directory / "data"
        self.socket_dir = directory / "sock"
        self.password_file = directory / "superuser-password"
        self.passfile = directory / "pgpass"
        # Tests trade durability for speed; a development stack keeps fsync on.
        self.durable = durable
        self._user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None

    @property
    def password(self) -> str:
        """The superuser's password (made on the first start, kept in the directory)."""
        return read_or_create_secret(self.password_file)

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
        self.socket_dir.chmod(0o700)
        self.log_path.touch()
        self._chown(self.log_path)
        password = self.password
        write_private(self.passfile, f"{self.host}:{self.port}:*:{SUPERUSER}:{password}\n")
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._write_auth_files()

    def _write_auth_files(self) -> None:
        # Peer authentication on the socket: the harness's own OS user, as `postgres`.
        harness_user = pwd.getpwuid(os.geteuid()).pw_name
        ident = f"# MAPNAME  SYSTEM-USERNAME  PG-USERNAME\nharness  {harness_user}  {SUPERUSER}\n"
        for name, text in (("pg_hba.conf", PG_HBA), ("pg_ident.conf", ident)):
            path = self.data_dir / name
            write_private(path, text)
            self._chown(path)

    def _initdb(self) -> None:
        result = subprocess.run(  # type: ignore[call-overload]
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                # Replaced by _write_auth_files before the first start.
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
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
            "unix_socket_permissions=0700",
            "-c",
            "password_encryption=scram-sha-256",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=128MB",
        ]
        if not self.durable:
            cmd += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        if self.timescaledb:
            # Each database with the extension runs a job scheduler in a background worker:
            # the default 8 worker processes leave none for the jobs.
            cmd += ["-c", "shared_preload_libraries=timescaledb",
                    "-c", "timescaledb.telemetry_level=off",
                    "-c", "max_worker_processes=32",
                    "-c", "timescaledb.max_background_workers=24"]  # fmt: skip
        return cmd

    def start(self, timeout: float = 30.0) -> Self:
        was_running = self.running
        super().start(timeout)
        if not was_running:
            self._set_superuser_password()
        return self

    def is_ready(self) -> bool:
        # The socket: over TCP the superuser's password may not be set yet.
        try:
            with psycopg.connect(self.socket_conninfo(), connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def _set_superuser_password(self) -> None:
        with psycopg.connect(self.socket_conninfo(), autocommit=True) as conn:
            verifier = scram_verifier(conn, SUPERUSER, self.password)
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(SUPERUSER), sql.Literal(verifier)
                )
            )

    def socket_conninfo(self, dbname: str = "postgres") -> str:
        """Over the Unix socket, as `postgres` by peer authentication (the harness's OS user
        only)."""
        return f"host={self.socket_dir} port={self.port} user={SUPERUSER} dbname={dbname}"

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGINT) -> None:
        # SIGINT is PostgreSQL's "fast shutdown": roll back sessions, checkpoint, exit.
        super().stop(timeout, sig)

    def conninfo(self, dbname: str = "postgres") -> str:
        """The superuser over TCP, password included (hex: no quoting needed)."""
        return (
            f"host={self.host} port={self.port} user={SUPERUSER} dbname={dbname} "
            f"password={self.password}"
        )

    def create_database(self, name: str) -> str:
        """Create an empty database and return its conninfo."""
        if not SAFE_NAME.match(name):
            raise ValueError(f"unsafe database name {name!r}")
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.conninfo(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, its connections too; nothing when the server is not running
        (a test that stopped it) or the database is gone."""
        if not SAFE_NAME.match(name):
            raise ValueError(f"unsafe database name {name!r}")
        if not self.running:
            return
        try:
            with psycopg.connect(self.conninfo(), autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.OperationalError:
            pass  # the server is stopping: its data directory goes with the session
