"""The local stack: servers, one-time set-up, our services, in order; stopped in reverse.

    PostgreSQL, Redis, Kafka-protocol broker (Tansu)      servers (f2pipe_devtools.servers)
      -> f2pipe migrate, f2pipe seed-demo, f2pipe certgen --bootstrap-only   (idempotent)
      -> Mosquitto (production configuration, mutual TLS, under run-broker.sh)
      -> certgen, api, sink, processor, bridge    our services, started together, waited healthy
      -> simulator                                  once every bridge is subscribed

With `DevOptions.instances` N > 1, bridge, processor and sink run N times each (sink,
sink-2, …; dev/instances.py): the bridges in one $share group, each with its own identity.
Started with fewer bridges than before, the stack ends the departed ones' broker sessions
first (`f2pipe bridge --leave n`), which hand their share of the group to Kafka: left alone,
each would go on collecting a share of the messages that nobody reads. One bridge alone
subscribes plainly, and drops the group's filters its session may hold from a larger stack:
Mosquitto 2.0 keeps a plain subscription over its own restart, not a $share one
(dev/instances.py).

Everything lives in one state directory (`.dev/` by default). PostgreSQL's data, the CA,
the demo fleet's claim codes and the simulated controllers' certificates survive a restart;
the Kafka-protocol broker keeps its topics in memory, so they start empty every time.

While it runs, a server that dies is started again (supervise.SupervisedServer), like a
service; the Kafka broker comes back empty, so its topics are made again before the services
may use it (they are paused meanwhile: the broker would auto-create a topic a producer writes
to, with its own partition count).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from confluent_kafka import KafkaException

from f2pipe.brokerconfig import supervisor_command, write
from f2pipe_devtools.dev import instances as scaled
from f2pipe_devtools.dev import probes
from f2pipe_devtools.dev.ports import Ports
from f2pipe_devtools.dev.procs import Console, Follower, Service, private_dir
from f2pipe_devtools.dev.supervise import SupervisedServer
from f2pipe_devtools.env import kafka_env, mqtt_env, postgres_env, redis_env, stack_env
from f2pipe_devtools.servers import KafkaBroker, PostgresServer, RedisServer, ServerProcess
from f2pipe_devtools.servers.base import read_or_create_secret, write_private
from f2pipe_devtools.servers.redis import processor_acl
from f2pipe_shared.kafka import ensure_topics, pipeline_topics
from f2pipe_shared.settings import KafkaSettings, load

HOST = "127.0.0.1"
DATABASE = "f2pipe"
# Started in this order, stopped in the reverse one: the simulator stops publishing first,
# the bridge flushes what it holds, then the processor and the sink drain theirs.
SERVICES = ("certgen", "api", "sink", "processor", "bridge", "simulator")
LEAVE_TIMEOUT_S = 360.0  # `--leave` gives up after 300 s of messages that keep coming
START_TIMEOUT = {"simulator": 180.0}  # enrolment of the whole fleet on its first start
# Each logs into PostgreSQL with a role of its own (docs/data_model.md#database-roles).
DATABASE_SERVICES = ("certgen", "api", "sink", "processor", "simulator")
# The services serving their own HTTPS, with certificates from the stack's CA (health and
# metrics on their one port).
HTTP_SERVICES = ("certgen", "api")
# The file, in the state directory, holding the stack's api admin token (not a token).
API_ADMIN_TOKEN_FILE = "api-admin-token"  # noqa: S105


@dataclass
class DevOptions:
    root: Path
    ports: Ports
    controllers: int = 20
    simulator: bool = True
    publish_interval: float = 5.0
    event_interval: float = 30.0
    env: dict[str, str] = field(default_factory=dict)  # extra settings for every service
    instances: int = 1  # of bridge, processor and sink each (their ports: Ports(instances))

    def start_waves(self) -> list[list[str]]:
        """The services in start order: every instance of every stage but the simulator at
        once (each retries what it talks to, and the consumers start at the earliest offset,
        so none needs another up first), then the simulator once every bridge is subscribed
        (on a fresh broker a message published before would have no session to wait in)."""
        pipeline = [name for stage in SERVICES if stage != "simulator"
                    for name in scaled.names(stage, self.instances)]  # fmt: skip
        return [pipeline, ["simulator"]] if self.simulator else [pipeline]


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


BROKER_USER = "mosquitto"  # the account of Debian's package


class DevBroker(ServerProcess):
    """Mosquitto with the production configuration rendered for the state directory."""

    name = "mosquitto"

    def __init__(
        self, directory: Path, port: int, ca_dir: Path, issued_dir: Path, acl_extra: str = ""
    ) -> None:
        super().__init__(directory, port)
        self.ca_dir, self.issued_dir = ca_dir, issued_dir
        self.acl_extra = acl_extra  # appended to the ACL copy (further bridges' blocks)

    def prepare(self) -> None:
        # Started as root, Mosquitto runs as `mosquitto` (as in docker-compose): it reads
        # ca.crt and crl.pem where certgen keeps them (0644) but never ca.key (0600, root's),
        # and its own copy of the broker's key pair, made at each start (a renewed broker
        # certificate takes effect at the next `dev up`).
        issued = self.issued_dir
        if os.geteuid() == 0:
            issued = self._own_copy_of_the_broker_pair()
        user = BROKER_USER if os.geteuid() == 0 else None
        self.conf = write(self.directory, ca_dir=self.ca_dir, issued_dir=issued,
                          port=self.port, host=self.host, user=user)  # fmt: skip
        if self.acl_extra:  # written again at each start: a restart keeps the blocks
            with (self.directory / "acl").open("a") as acl:
                acl.write(self.acl_extra)
        if os.geteuid() == 0:
            account = pwd.getpwnam(BROKER_USER)
            for path in [self.directory / "data", *(self.directory / "data").rglob("*")]:
                os.chown(path, account.pw_uid, account.pw_gid)

    def _own_copy_of_the_broker_pair(self) -> Path:
        account = pwd.getpwnam(BROKER_USER)
        certs = self.directory / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        os.chown(certs, account.pw_uid, account.pw_gid)
        certs.chmod(0o700)
        for name, mode in (("broker.key", 0o600), ("broker.crt", 0o644)):
            target = certs / f".{name}.new"
            target.unlink(missing_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as out:
                out.write((self.issued_dir / name).read_bytes())
            os.chown(target, account.pw_uid, account.pw_gid)
            target.replace(certs / name)
        return certs

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
        self.supervised: dict[str, SupervisedServer] = {}
        self.followers: list[Follower] = []
        self.services: dict[str, Service] = {}
        self.broker_session: probes.MqttSession | None = None  # the status line's probe

    # --- up ---------------------------------------------------------------------------------

    def up(self) -> None:
        """Start everything; on failure stop what started, then raise."""
        self.root.mkdir(parents=True, exist_ok=True)
        check_enterable(self.root)
        private_dir(self.root / "logs")  # 0700, its files 0600 (procs.open_private_log)
        try:
            self._start_servers()
            self._prepare()
            departed = self.departed_bridges()
            # The departed keep their ACL block until they left: the broker checks it on
            # every message it hands over.
            acl = scaled.acl_blocks(max([self.options.instances, *departed]))
            self._start_server(DevBroker(self.root / "broker", self.options.ports.mqtt,
                                         self.ca_dir, self.issued_dir, acl))  # fmt: skip
            self._end_departed_bridges(departed)
            for wave in self.options.start_waves():
                self.start_services(wave)
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
        self._start_server(RedisServer(
            self.root / "redis", ports.redis, password=self.secret("redis-password"),
            users={"processor": processor_acl(self.secret("redis-processor-password"))},
        ))  # fmt: skip
        self._start_server(KafkaBroker(self.root / "kafka", ports.kafka))

    def _start_server(self, server: ServerProcess) -> None:
        self.console.line("dev", f"starting {server.name} on port {server.port}")
        follower = Follower(server.name, server.log_path, self.console).start()
        self.followers.append(follower)
        server.start(timeout=60)
        self.servers.append(server)
        restarting = self._kafka_restart if isinstance(server, KafkaBroker) else None
        self.supervised[server.name] = SupervisedServer(server, self.console, restarting=restarting)

    def _prepare(self) -> None:
        """Migrations, the services' database roles, the demo fleet, the CA: each idempotent,
        as an operator runs them (the first three as the schema's owner)."""
        self._run("migrate", ["migrate"], login="owner")
        self._run("db-roles", ["db-roles"], login="owner")
        self._run("seed-demo", ["seed-demo", "--controllers", str(self.options.controllers),
                                "--claim-codes", str(self.claim_codes)], login="owner")  # fmt: skip
        self._run("ca", ["certgen", "--bootstrap-only"], login="certgen")
        self._bridge_identities()
        self._probe_identities()
        self._api_admin_token()

    def _bridge_identities(self) -> None:
        """Bridges 2..N: a service certificate each from the stack's CA (kept, as the first
        bridge's; certgen's bootstrap issues only that one)."""
        for number in range(2, self.options.instances + 1):
            cn = scaled.bridge_identity(number)[1]
            if self._issue(cn, *self._bridge_files(number)):
                self.console.line("dev", f"issued {cn} for bridge {number}")

    def _probe_identities(self) -> None:
        """The broker probes' identities (dev/probes.py): they connect, and neither publish
        nor subscribe."""
        for name in (probes.WATCH_IDENTITY, probes.STATUS_IDENTITY):
            self._issue(f"svc-{name}", *probes.identity_files(self.root, name))

    def _issue(self, cn: str, cert: Path, key: Path) -> bool:
        """A service certificate for ``cn`` from the stack's CA, kept; False if it was there."""
        from f2pipe_certgen.ca import CertificateAuthority
        from f2pipe_certgen.files import PRIVATE, PUBLIC, replace

        if cert.exists() and key.exists():
            return False
        ca = CertificateAuthority.load(self.ca_dir)
        issued, key_pem = ca.issue_key_and_certificate(cn, days=365, kind="service")
        replace(key, key_pem.encode(), PRIVATE)
        replace(cert, issued.pem.encode(), PUBLIC)
        return True

    def departed_bridges(self) -> list[int]:
        """Bridges beyond the instances asked for that have an identity: they ran before, and
        their session may still be in the group."""
        return [n for n in range(self.options.instances + 1, scaled.MAX_INSTANCES + 1)
                if all(p.exists() for p in self._bridge_files(n))]  # fmt: skip

    def _bridge_files(self, number: int) -> tuple[Path, Path]:
        return probes.identity_files(self.root, scaled.bridge_identity(number)[0])

    def _end_departed_bridges(self, departed: list[int]) -> None:
        """End each departed bridge's session, then retire its identity (issued again if the
        stack grows back); one that could not leave is tried again at the next start."""
        for number in departed:
            if self.leave_bridge(number) != 0:
                self.console.line("dev", f"bridge {number} could not leave; tried again next start")
                continue
            for path in self._bridge_files(number):
                path.unlink()
            self.console.line("dev", f"bridge {number}: its session ended, its share handed over")

    def leave_bridge(self, number: int) -> int:
        """`f2pipe bridge --leave number` against this stack; its exit code."""
        env = {"BRIDGE_SHARED_GROUP": scaled.SHARED_GROUP, "METRICS_PORT": "0"}
        return self._run(f"bridge-{number}", ["bridge", "--leave", str(number)], login="bridge",
                         env=env, check=False, timeout=LEAVE_TIMEOUT_S)  # fmt: skip

    def _api_admin_token(self) -> None:
        """An admin token for the api, made at the first `dev up` and kept 0600 in the state
        directory: random per installation, so no default credential; a new one (under a new
        name) when the file is gone."""
        path = self.root / API_ADMIN_TOKEN_FILE
        if path.exists():
            return
        from f2pipe_api.tokens import Role, create_token

        name = f"dev-admin-{secrets.token_hex(3)}"
        token, _ = create_token(self.conninfo, name, Role.admin)
        write_private(path, token)
        self.console.line("dev", f"api: admin token {name} written to {path}")

    def _run(
        self,
        name: str,
        args: list[str],
        *,
        login: str,
        env: dict[str, str] | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> int:
        """`f2pipe args` against this stack, its output on the console as `name`; its exit
        code, which must be 0 when `check`."""
        result = subprocess.run(
            [sys.executable, "-m", "f2pipe", *args],
            env={**self.env(), **self.database_env(login), **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        for line in (result.stdout + result.stderr).splitlines():
            self.console.line(name, line)
        if check and result.returncode != 0:
            raise RuntimeError(f"f2pipe {' '.join(args)} failed with {result.returncode}")
        return result.returncode

    def start_services(self, names: list[str]) -> None:
        """Start ``names`` together, then wait for each to be healthy: one after the other,
        each would wait out the imports and group joins of those before it."""
        started = []
        for name in names:
            service = self.service(name)
            self.services[name] = service
            self.console.line("dev", f"starting {name}")
            started.append(service.start())
        for service in started:
            service.wait_healthy(START_TIMEOUT.get(service.name, 60.0))

    def service(self, name: str) -> Service:
        """A service (not started): ``name`` is a stage or one of its instances (`sink-2`)."""
        port, stage = self.options.ports.of(name), scaled.parse(name)[0]
        argv = [sys.executable, "-m", "f2pipe", stage]
        env = {**self.env(), **self.database_env(stage), "METRICS_PORT": str(port),
               **scaled.instance_env(name, self.options.instances, str(self.issued_dir),
                                        str(self.root))}  # fmt: skip
        if name in HTTP_SERVICES:
            argv += ["--host", HOST, "--port", str(port)]
            env.pop("METRICS_PORT")
        if name == "simulator":
            argv += ["--controllers", str(self.options.controllers)]
        log_path = self.root / "logs" / f"{name}.log"
        ca_file = self.ca_dir / "ca.crt" if name in HTTP_SERVICES else None
        return Service(name, argv, env, log_path, self.console,
                       health_url=self.health_url(name), ca_file=ca_file)  # fmt: skip

    def health_url(self, name: str) -> str:
        # certgen and the api serve HTTPS only (certificates from the stack's CA, for
        # 127.0.0.1 too).
        scheme = "https" if name in HTTP_SERVICES else "http"
        return f"{scheme}://{HOST}:{self.options.ports.of(name)}/healthz"

    def metrics_url(self, name: str) -> str:
        return f"http://{HOST}:{self.options.ports.of(name)}/metrics"

    # --- settings ---------------------------------------------------------------------------

    def admin_token(self) -> str:
        return self.secret("admin-token")

    def secret(self, name: str) -> str:
        """A random secret made at the first `dev up`, kept 0600 in the state directory."""
        self.root.mkdir(parents=True, exist_ok=True)
        return read_or_create_secret(self.root / name, nbytes=32)

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
            redis_env(HOST, ports.redis, self.secret("redis-processor-password")),
            kafka_env(f"{HOST}:{ports.kafka}"),
            mqtt_env(ports.mqtt, ca_file=str(self.ca_dir / "ca.crt")),
        )
        for name in [k for k in env if k.startswith("TIMESCALE_")]:
            env.pop(name, None)  # one database
        env.update(
            F2PIPE_ENV="development",
            POSTGRES_PASSWORD="",
            REDIS_USERNAME="processor",
            CA_DIR=str(self.ca_dir),
            ISSUED_DIR=str(self.issued_dir),
            BRIDGE_CERT_FILE=str(self.issued_dir / "bridge.crt"),
            BRIDGE_KEY_FILE=str(self.issued_dir / "bridge.key"),
            CERTGEN_API_HOST=HOST,
            CERTGEN_API_PORT=str(ports.certgen),
            CERTGEN_ADMIN_TOKEN=self.admin_token(),
            API_CERTGEN_URL=f"https://{HOST}:{ports.certgen}",
            API_CERTGEN_ADMIN_TOKEN=self.admin_token(),
            API_CERTGEN_CA_FILE=str(self.ca_dir / "ca.crt"),
            API_TLS_CERT_FILE=str(self.issued_dir / "api.crt"),
            API_TLS_KEY_FILE=str(self.issued_dir / "api.key"),
            # Commands: the api's own MQTT identity (svc-api-commands), the stack's broker.
            API_MQTT_CERT_FILE=str(self.issued_dir / "api-commands.crt"),
            API_MQTT_KEY_FILE=str(self.issued_dir / "api-commands.key"),
            METRICS_HOST=HOST,
            PROCESSOR_DATA_DIR=str(root / "processor"),
            SIMULATOR_STATE_DIR=str(root / "simulator"),
            SIMULATOR_CLAIM_CODES=str(self.claim_codes),
        )
        env.update(self.options.env)
        return env

    def database_env(self, login: str) -> dict[str, str]:
        """POSTGRES_USER/_PASSWORD of one process. `owner` (migrate, db-roles, seed-demo): the
        superuser, and each service's role and password for db-roles to make. A service that
        uses the database: its own login role (migration 0009, `f2pipe db-roles`). Any other
        process: no password at all."""
        if login == "owner":
            env = {"POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": self.superuser_password()}
            for service in DATABASE_SERVICES:
                env[f"POSTGRES_{service.upper()}_USER"] = service
                env[f"POSTGRES_{service.upper()}_PASSWORD"] = self.role_password(service)
            return env
        if login in DATABASE_SERVICES:
            return {"POSTGRES_USER": login, "POSTGRES_PASSWORD": self.role_password(login)}
        return {"POSTGRES_PASSWORD": ""}

    def role_password(self, service: str) -> str:
        return self.secret(f"postgres-{service}-password")

    def superuser_password(self) -> str:
        """Made by the PostgreSQL harness at its first start, kept 0600 beside its data."""
        return read_or_create_secret(self.root / "postgres" / "superuser-password")

    @property
    def conninfo(self) -> str:
        """The superuser's, password read from the harness's password file: safe to print."""
        port, passfile = self.options.ports.postgres, self.root / "postgres" / "pgpass"
        return f"host={HOST} port={port} user=postgres dbname={DATABASE} passfile={passfile}"

    # --- running and stopping ---------------------------------------------------------------

    def check(self) -> list[str]:
        """Restart services and servers that died; the names of services given up on and of
        servers down (dead, or waiting for their restart)."""
        failed = [n for n, s in self.services.items() if not s.restart_if_dead()]
        for supervised in self.supervised.values():
            supervised.tick()
        failed += [name for name, s in self.supervised.items() if s.down]
        return failed

    def server_probes(self) -> dict[str, Callable[[], bool]]:
        """Each running server's probe: a real exchange (dev/probes.py); for the broker one
        standing session, held until `down`."""
        every = probes.probes(self.root, self.options.ports.as_dict())
        if self.broker_session is None:
            self.broker_session = probes.mqtt_session(
                self.root, self.options.ports.mqtt, probes.WATCH_IDENTITY
            )
            if self.broker_session is not None:  # connected before the first status line
                self.broker_session.wait(probes.TIMEOUT)
        if self.broker_session is not None:
            every["mosquitto"] = self.broker_session
        return {name: every[name] for name in self.supervised}

    @property
    def kafka_lost_at(self) -> list[str]:
        """When the Kafka broker died (HH:MM:SS) since `dev up`: each time it lost it all."""
        kafka = self.supervised.get("kafka")
        return list(kafka.deaths) if kafka else []

    def kafka_settings(self) -> KafkaSettings:
        """The services' Kafka settings (topic names, partition counts), as they read them."""
        env = self.env()
        return load(
            KafkaSettings, **{k.lower(): v for k, v in env.items() if k.startswith("KAFKA_")}
        )

    @contextlib.contextmanager
    def _kafka_restart(self) -> Iterator[None]:
        """Around a restart of the (memory-storage) broker: the services are paused until the
        topics exist again with the configured partition counts, since the broker creates a
        topic someone produces to with a count of its own (4 for Tansu 0.6)."""
        paused = self._signal_services(signal.SIGSTOP)
        try:
            yield
            self._make_topics()
        finally:
            for pid in paused:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGCONT)

    def _make_topics(self) -> None:
        settings = self.kafka_settings()
        topics = pipeline_topics(settings)
        try:
            ensure_topics(settings, topics, timeout=30)
        except KafkaException as exc:
            self.console.line("dev", f"kafka: could not create the topics again: {exc}")
            return
        made = ", ".join(f"{name} ({count} partitions)" for name, count in topics.items())
        self.console.line("dev", f"kafka restarted empty: the local Kafka lost what it held "
                                 f"(memory storage); topics made again: {made}")  # fmt: skip

    def _signal_services(self, sig: int) -> list[int]:
        """Send `sig` to every running service's process group; the groups reached."""
        reached = []
        for service in self.services.values():
            if service.running and service.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service.pid, sig)
                    reached.append(service.pid)
        return reached

    def down(self) -> None:
        if self.broker_session is not None:
            self.broker_session.close()
            self.broker_session = None
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
        self.supervised.clear()
        for follower in self.followers:
            follower.stop()
        self.followers.clear()
