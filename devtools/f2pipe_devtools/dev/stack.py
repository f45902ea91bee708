"""The local stack: servers, one-time set-up, our services, in order; stopped in reverse.

    PostgreSQL, Redis, Kafka-protocol broker (Tansu)      servers (f2pipe_devtools.servers)
      -> f2pipe migrate, f2pipe seed-demo, f2pipe certgen --bootstrap-only   (idempotent)
      -> Mosquitto (production configuration, mutual TLS, under run-broker.sh)
      -> certgen, processor, sink, bridge, simulator      our services, each waited healthy

Everything lives in one state directory (`.dev/` by default). PostgreSQL's data, the CA,
the demo fleet's claim codes and the simulated controllers' certificates survive a restart;
the Kafka-protocol broker keeps its topics in memory, so they start empty every time.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from f2pipe.brokerconfig import supervisor_command, write
from f2pipe_devtools.dev.ports import Ports
from f2pipe_devtools.dev.procs import Console, Follower, Service, private_dir
from f2pipe_devtools.env import kafka_env, mqtt_env, postgres_env, redis_env, stack_env
from f2pipe_devtools.servers import KafkaBroker, PostgresServer, RedisServer, ServerProcess

HOST = "127.0.0.1"
DATABASE = "f2pipe"
# Started in this order, stopped in the reverse one: the simulator stops publishing first,
# the bridge flushes what it holds, then the processor and the sink drain theirs.
SERVICES = ("certgen", "sink", "processor", "bridge", "simulator")
START_TIMEOUT = {"simulator": 180.0}  # enrolment of the whole fleet on its first start


@dataclass
class DevOptions:
    root: Path
    ports: Ports
    controllers: int = 20
    simulator: bool = True
    publish_interval: float = 5.0
    event_interval: float = 30.0
    env: dict[str, str] = field(default_factory=dict)  # extra settings for every service


class StateDirError(RuntimeError):
    pass


def check_enterable(root: Path) -> None:
    """As root, PostgreSQL runs as `postgres`: every directory above its data must let it in."""
    if os.geteuid() != 0:
        return
    for directory in (root, *root.parents):
        if not directory.stat().st_mode & 0o001:
            raise StateDirError(
                f"PostgreSQL runs as the `postgres` user, which cannot enter {directory} "
                f"(mode {directory.stat().st_mode & 0o777:o}): choose a --state-dir it can "
                "enter, e.g. --state-dir /var/tmp/f2pipe-dev"
            )


class DevBroker(ServerProcess):
    """Mosquitto with the production configuration rendered for the state directory."""

    name = "mosquitto"

    def __init__(self, directory: Path, port: int, ca_dir: Path, issued_dir: Path) -> None:
        super().__init__(directory, port)
        self.ca_dir, self.issued_dir = ca_dir, issued_dir

    def prepare(self) -> None:
        # As root Mosquitto would switch to `mosquitto`, which cannot read the 0600 keys.
        user = "root" if os.geteuid() == 0 else None
        self.conf = write(self.directory, ca_dir=self.ca_dir, issued_dir=self.issued_dir,
                          port=self.port, host=self.host, user=user)  # fmt: skip

    def command(self) -> list[str]:
        return supervisor_command(self.conf)


class DevStack:
    def __init__(self, options: DevOptions, console: Console) -> None:
        self.options = options
        self.console = console
        root = options.root.resolve()
        self.root = root
        self.ca_dir, self.issued_dir = root / "ca", root / "issued"
        self.claim_codes = root / "claim-codes.csv"
        self.servers: list[ServerProcess] = []
        self.followers: list[Follower] = []
        self.services: dict[str, Service] = {}

    # --- up ---------------------------------------------------------------------------------

    def up(self) -> None:
        """Start everything; on failure stop what started, then raise."""
        self.root.mkdir(parents=True, exist_ok=True)
        check_enterable(self.root)
        private_dir(self.root / "logs")  # 0700, its files 0600 (procs.open_private_log)
        try:
            self._start_servers()
            self._prepare()
            self._start_server(DevBroker(self.root / "broker", self.options.ports.mqtt,
                                         self.ca_dir, self.issued_dir))  # fmt: skip
            for name in SERVICES:
                if name == "simulator" and not self.options.simulator:
                    continue
                self.start_service(name)
        except BaseException:
            self.down()
            raise

    def _start_servers(self) -> None:
        ports = self.options.ports
        postgres = PostgresServer(self.root / "postgres", ports.postgres, durable=True)
        self._start_server(postgres)
        with psycopg.connect(postgres.conninfo()) as conn:
            query = "SELECT 1 FROM pg_database WHERE datname = %s"
            exists = conn.execute(query, (DATABASE,)).fetchone() is not None
        if not exists:
            postgres.create_database(DATABASE)
        self._start_server(RedisServer(self.root / "redis", ports.redis))
        self._start_server(KafkaBroker(self.root / "kafka", ports.kafka))

    def _start_server(self, server: ServerProcess) -> None:
        self.console.line("dev", f"starting {server.name} on port {server.port}")
        follower = Follower(server.name, server.log_path, self.console).start()
        self.followers.append(follower)
        server.start(timeout=60)
        self.servers.append(server)

    def _prepare(self) -> None:
        """Migrations, the demo fleet, the CA: each idempotent, as an operator runs them."""
        self._run("migrate", ["migrate"])
        self._run("seed-demo", ["seed-demo", "--controllers", str(self.options.controllers),
                                "--claim-codes", str(self.claim_codes)])  # fmt: skip
        self._run("ca", ["certgen", "--bootstrap-only"])

    def _run(self, name: str, args: list[str]) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "f2pipe", *args],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        for line in (result.stdout + result.stderr).splitlines():
            self.console.line(name, line)
        if result.returncode != 0:
            raise RuntimeError(f"f2pipe {' '.join(args)} failed with {result.returncode}")

    def start_service(self, name: str) -> Service:
        service = self.service(name)
        self.services[name] = service
        self.console.line("dev", f"starting {name}")
        service.start().wait_healthy(START_TIMEOUT.get(name, 60.0))
        return service

    def service(self, name: str) -> Service:
        ports = self.options.ports
        argv = [sys.executable, "-m", "f2pipe", name]
        env = {**self.env(), "METRICS_PORT": str(getattr(ports, name))}
        if name == "certgen":
            argv += ["--host", HOST, "--port", str(ports.certgen)]
            env.pop("METRICS_PORT")
        if name == "simulator":
            argv += ["--controllers", str(self.options.controllers)]
        log_path = self.root / "logs" / f"{name}.log"
        return Service(name, argv, env, log_path, self.console, health_url=self.health_url(name))

    def health_url(self, name: str) -> str:
        return f"http://{HOST}:{getattr(self.options.ports, name)}/healthz"

    def metrics_url(self, name: str) -> str:
        return f"http://{HOST}:{getattr(self.options.ports, name)}/metrics"

    # --- settings ---------------------------------------------------------------------------

    def admin_token(self) -> str:
        path = self.root / "admin-token"
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
        return path.read_text().strip()

    def env(self) -> dict[str, str]:
        """The settings every process of the stack gets: the shell's, with ours on top."""
        ports, root = self.options.ports, self.root
        defaults = {
            "LOG_FORMAT": "text",
            "PUBLISH_INTERVAL": str(self.options.publish_interval),
            "SIMULATOR_EVENT_INTERVAL": str(self.options.event_interval),
        }
        shell = {k: v for k, v in os.environ.items() if k in defaults}
        env = stack_env(
            defaults,
            shell,
            postgres_env(self.conninfo),
            redis_env(HOST, ports.redis),
            kafka_env(f"{HOST}:{ports.kafka}"),
            mqtt_env(ports.mqtt, ca_file=str(self.ca_dir / "ca.crt")),
        )
        for name in [k for k in env if k.startswith("TIMESCALE_")] + ["REDIS_PASSWORD"]:
            env.pop(name, None)  # one database, a Redis without password
        env.update(
            F2PIPE_ENV="development",
            POSTGRES_PASSWORD="",
            CA_DIR=str(self.ca_dir),
            ISSUED_DIR=str(self.issued_dir),
            BRIDGE_CERT_FILE=str(self.issued_dir / "bridge.crt"),
            BRIDGE_KEY_FILE=str(self.issued_dir / "bridge.key"),
            CERTGEN_API_HOST=HOST,
            CERTGEN_API_PORT=str(ports.certgen),
            CERTGEN_ADMIN_TOKEN=self.admin_token(),
            METRICS_HOST=HOST,
            PROCESSOR_DATA_DIR=str(root / "processor"),
            SIMULATOR_STATE_DIR=str(root / "simulator"),
            SIMULATOR_CLAIM_CODES=str(self.claim_codes),
        )
        env.update(self.options.env)
        return env

    @property
    def conninfo(self) -> str:
        port = self.options.ports.postgres
        return f"host={HOST} port={port} user=postgres dbname={DATABASE}"

    # --- running and stopping ---------------------------------------------------------------

    def check(self) -> list[str]:
        """Restart services that died; the names of those given up on or servers down."""
        failed = [n for n, s in self.services.items() if not s.restart_if_dead()]
        failed += [s.name for s in self.servers if not s.running]
        return failed

    def down(self) -> None:
        for name in reversed(list(self.services)):
            self.console.line("dev", f"stopping {name}")
            code = self.services[name].stop()
            if code not in (0, None):
                self.console.line("dev", f"{name} exited with {code}")
        self.services.clear()
        for server in reversed(self.servers):
            self.console.line("dev", f"stopping {server.name}")
            server.stop(timeout=30)
        self.servers.clear()
        for follower in self.followers:
            follower.stop()
        self.followers.clear()
