"""Per-service database roles against a real, password-protected PostgreSQL.

Every login over TCP needs a password (SCRAM-SHA-256). Each service logs in as its own role,
made by `f2pipe db-roles`, a member of the group role migration 0009 grants: each can do its
job through its real code (the sink's writer and process, the processor's registry queries and
LISTEN, certgen's whole API as a process, the simulator's fleet query) and nothing more. A
refused login stops a service at start-up with one line naming the settings, never the
password.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr

from f2pipe.dbroles import GROUPS, SERVICES, ServiceLogin, apply_roles
from f2pipe.migrate import apply_migrations
from f2pipe.seed import demo_mac, seed_demo
from f2pipe_devtools.env import as_user, postgres_env, service_env
from f2pipe_devtools.servers import PostgresServer
from f2pipe_processor.metrics import ProcessorMetrics
from f2pipe_processor.registry import Location, Registry
from f2pipe_shared.dblogin import LoginRefused, check_login, registry_login
from f2pipe_shared.records import Event, Reading
from f2pipe_shared.settings import PostgresSettings
from f2pipe_shared.topics import parse_topic
from f2pipe_simulator.registry import load_fleet
from f2pipe_sink.writer import Writer
from tests.integration.certgen_harness import ADMIN_TOKEN, certgen_env, make_csr
from tests.integration.test_certgen_tls import start_https
from tests.integration.test_sink import Stack, batch, make_readings, wait_until
from tests.integration.test_sink_writer import record

# The database layer: run on TimescaleDB and again on plain PostgreSQL (Makefile `test`).
pytestmark = [pytest.mark.integration, pytest.mark.database]

MAC1, MAC2, MAC3 = demo_mac(1), demo_mac(2), demo_mac(3)
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass(frozen=True)
class Roles:
    """A migrated, seeded database and a login role of its own for every service."""

    owner: str  # the superuser's conninfo: owner of the schema
    logins: dict[str, ServiceLogin]
    claim_codes: dict[str, str]

    def conninfo(self, service: str, password: str | None = None) -> str:
        login = self.logins[service]
        return as_user(self.owner, login.user, login.password if password is None else password)

    def env(self, service: str, password: str | None = None) -> dict[str, str]:
        """POSTGRES_* as the service gets them: its role, its password (or ``password``)."""
        return postgres_env(self.conninfo(service, password))


@pytest.fixture
def roles(pg_conninfo: str) -> Roles:
    apply_migrations(pg_conninfo)
    codes = dict(seed_demo(pg_conninfo, 3).claim_codes)
    suffix = uuid.uuid4().hex[:8]  # roles belong to the server: each test makes its own
    logins = {s: ServiceLogin(s, f"{s}_{suffix}", secrets.token_hex(16)) for s in SERVICES}
    apply_roles(pg_conninfo, list(logins.values()))
    return Roles(pg_conninfo, logins, codes)


def refused(conninfo: str, statement: str) -> bool:
    """True when ``statement`` fails for lack of privilege (and changes nothing)."""
    with psycopg.connect(conninfo) as conn:
        try:
            conn.execute(statement)
        except pg_errors.InsufficientPrivilege:
            return True
        finally:
            conn.rollback()
    return False


def assert_refused(conninfo: str, *statements: str) -> None:
    allowed = [s for s in statements if not refused(conninfo, s)]
    assert allowed == [], f"allowed, should be refused: {allowed}"


# --- authentication --------------------------------------------------------------------------


def test_tcp_login_needs_a_password_checked_with_scram(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-such-pgpass"))  # not ~/.pgpass
    no_password = as_user(postgres_server.conninfo(), "postgres", None)
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(no_password, connect_timeout=5)
    wrong = as_user(postgres_server.conninfo(), "postgres", "wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5)

    with psycopg.connect(postgres_server.conninfo()) as conn:
        rules = conn.execute(
            "SELECT type, auth_method, error FROM pg_hba_file_rules ORDER BY line_number"
        ).fetchall()
        encryption = conn.execute("SHOW password_encryption").fetchone()
    assert [r for r in rules if r[2] is not None] == []
    assert {auth for kind, auth, _ in rules if kind.startswith("host")} == {"scram-sha-256"}
    # The socket: the harness's own OS user only, as `postgres` (never trust).
    assert {auth for kind, auth, _ in rules if kind == "local"} == {"peer"}
    assert encryption == ("scram-sha-256",)


def test_login_roles_hold_scram_verifiers_and_nothing_but_their_group(roles: Roles) -> None:
    users = [login.user for login in roles.logins.values()]
    with psycopg.connect(roles.owner) as conn:
        rows = conn.execute(
            """SELECT r.rolname, r.rolpassword, r.rolcanlogin, r.rolsuper, r.rolcreaterole,
                      r.rolcreatedb, r.rolbypassrls,
                      array(SELECT g.rolname FROM pg_auth_members m
                            JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid)
               FROM pg_authid r WHERE r.rolname = ANY(%s) OR r.rolname = 'postgres'""",
            (users,),
        ).fetchall()
    assert len(rows) == len(users) + 1
    for name, verifier, login, *privileged, groups in rows:
        assert verifier.startswith("SCRAM-SHA-256$4096:"), name
        if name == "postgres":
            continue
        login_of = next(x for x in roles.logins.values() if x.user == name)
        assert login_of.password not in verifier
        assert login, name
        assert not any(privileged), name
        assert groups == [GROUPS[login_of.service]], name


# --- each role does its job, and not more -------------------------------------------------------


def test_the_sink_role_writes_readings_and_events_and_nothing_else(
    roles: Roles, pg_engine: str
) -> None:
    sink = roles.conninfo("sink")
    t0 = 1_795_000_000_000_000
    readings = [Reading(t0 + i, 11, 1 + i % 3, i / 4) for i in range(30)]
    events = [Event(t0, 11, "scan", {"data": "0a1b"})]
    writer = Writer(sink)
    try:
        first = writer.write([record(readings, events)])
        # A replay: the COPY meets stored keys, the merge path (temporary table, ON CONFLICT
        # DO NOTHING, which needs SELECT on the key columns) lands nothing twice.
        replay = writer.write([record(readings, events, offset=1)])
    finally:
        writer.close()
    assert (first.readings, first.events, first.rejected) == (30, 1, [])
    assert (replay.merged, replay.readings, replay.events, replay.rejected) == (True, 0, 0, [])
    with psycopg.connect(roles.owner) as conn:
        assert conn.execute("SELECT count(*) FROM telemetry.readings").fetchone() == (30,)
        assert conn.execute("SELECT count(*) FROM telemetry.events").fetchone() == (1,)

    # On TimescaleDB the sink reads whole telemetry tables (0009: column grants do not reach
    # the compressed hypertable); on plain PostgreSQL only the key columns.
    values = ["SELECT value FROM telemetry.readings", "SELECT data FROM telemetry.events"]
    assert_refused(
        sink,
        *(values if pg_engine == "postgres" else []),
        "SELECT * FROM telemetry.readings_labeled",
        "UPDATE telemetry.readings SET value = 0",
        "DELETE FROM telemetry.readings",
        "TRUNCATE telemetry.events",
        "CREATE TABLE telemetry.mine (i int)",
        "SELECT claim_code_hash FROM registry.devices",
        "SELECT serial FROM registry.certificates",
        "SELECT * FROM registry.claim_failures",
        "UPDATE registry.devices SET name = 'x'",
        "DELETE FROM registry.certificates",
        "INSERT INTO registry.enrolment_lockouts (mac, locked_until, failures) "
        f"VALUES ('{MAC1}', now() + interval '1 day', 1)",
    )


def test_the_processor_role_reads_the_registry_and_listens_but_writes_nothing(
    roles: Roles,
) -> None:
    processor = roles.conninfo("processor")
    topic = parse_topic(f"tele/f2-{MAC1}/sensor-mode/J3/sensor-1")
    unknown = parse_topic("tele/f2-aabbccddee99/sensor-mode/J3/sensor-1")

    async def queries() -> tuple[dict[str, Any], dict[int, Any], set[str]]:
        # The processor's whole database side: its Registry (which retries for ever on any
        # error, so a missing privilege would show as a timeout here).
        registry = Registry(processor, metrics=ProcessorMetrics())
        try:
            async with asyncio.timeout(20):
                found = await registry.locations([topic, unknown])
                location = found[topic.format()]
                assert isinstance(location, Location)
                assert location.template_id is not None
                templates = await registry.templates([location.template_id])
                macs = await registry.macs_for(
                    controllers=[location.controller_id],
                    connectors=[location.connector_id],
                    devices=[location.device_id],
                )
                return found, templates, macs
        finally:
            await registry.close()

    found, templates, macs = asyncio.run(queries())
    assert found[unknown.format()].reason == "unknown_mac"
    assert len(templates) == 1
    assert macs == {MAC1}

    # LISTEN needs no privilege: registry edits reach the processor's role.
    with psycopg.connect(processor, autocommit=True) as listener:
        listener.execute("LISTEN registry_changed")
        with psycopg.connect(roles.owner) as owner:
            owner.execute("UPDATE registry.devices SET name = name || '-x' WHERE mac = %s", (MAC1,))
        note = next(listener.notifies(timeout=10))
    assert json.loads(note.payload)["table"] == "devices"

    assert_refused(
        processor,
        "INSERT INTO telemetry.readings VALUES (now(), 1, 1, 1.0)",
        "SELECT * FROM telemetry.readings",
        f"UPDATE registry.devices SET name = 'x' WHERE mac = '{MAC1}'",
        "INSERT INTO registry.pins (connector_id, component, device_id) VALUES (1, 'sensor-6', 1)",
        "DELETE FROM registry.connectors",
        "UPDATE registry.datapoints SET label = 'x'",
        "SELECT claim_code_hash FROM registry.devices",
        "SELECT * FROM registry.devices",
        "SELECT serial FROM registry.certificates",
        "SELECT * FROM registry.claim_failures",
        "SELECT * FROM registry.enrolment_lockouts",
        "CREATE TABLE registry.mine (i int)",
    )


def test_the_simulator_role_reads_the_fleet_and_no_secret(roles: Roles) -> None:
    simulator = roles.conninfo("simulator")
    fleet = load_fleet(simulator)
    assert [spec.mac for spec in fleet] == [MAC1, MAC2, MAC3]
    assert all(spec.components for spec in fleet)
    assert_refused(
        simulator,
        "SELECT claim_code_hash FROM registry.devices",
        "SELECT serial FROM registry.certificates",
        "INSERT INTO telemetry.readings VALUES (now(), 1, 1, 1.0)",
        "UPDATE registry.devices SET name = 'x'",
    )


def test_the_api_role_manages_the_registry_but_cannot_rewrite_history(roles: Roles) -> None:
    # What the api does with it is proven by every api test (apikit logs in as this group);
    # here: what it must never do.
    api = roles.conninfo("api")
    with psycopg.connect(api) as conn:
        conn.execute("UPDATE registry.devices SET name = name")  # it manages the registry
        conn.execute("SELECT count(*) FROM registry.certificates")  # it shows certificates
        conn.execute("UPDATE registry.commands SET status = status")  # it tracks commands
        conn.execute("SELECT count(*) FROM telemetry.readings")  # the console shows values
        conn.execute("SELECT count(*) FROM telemetry.events")
        conn.rollback()
    assert_refused(
        api,
        "UPDATE registry.audit_log SET actor = 'someone else'",
        "DELETE FROM registry.audit_log",
        "UPDATE registry.api_tokens SET role = 'admin'",
        "DELETE FROM registry.api_tokens",
        "UPDATE registry.certificates SET status = 'revoked', revoked_at = now()",
        "DELETE FROM registry.commands",  # a command's history stays
        "INSERT INTO telemetry.readings VALUES (now(), 1, 1, 1.0)",
        "DELETE FROM telemetry.readings",
        "UPDATE telemetry.events SET kind = kind",
    )


def test_connectivity_state_is_written_by_the_sink_and_read_by_the_api(roles: Roles) -> None:
    # Migration 0014: the sink upserts telemetry.controller_status, the api only reads it.
    t0 = 1_795_000_000_000_000
    online = Event(t0, 11, "connectivity", {"status": "online",
                                            "last_seen": "2026-11-18 08:26:40.000000"})  # fmt: skip
    writer = Writer(roles.conninfo("sink"))
    try:
        assert writer.write([record([], [online])]).statuses == 1
        assert writer.write([record([], [online], offset=1)]).statuses == 1  # the upsert path
    finally:
        writer.close()
    api = roles.conninfo("api")
    with psycopg.connect(api) as conn:
        row = conn.execute("SELECT device_id, status FROM telemetry.controller_status").fetchone()
        assert row == (11, "online")
    assert_refused(
        api,
        "UPDATE telemetry.controller_status SET status = 'offline'",
        "INSERT INTO telemetry.controller_status (device_id, status) VALUES (12, 'online')",
        "DELETE FROM telemetry.controller_status",
        "INSERT INTO telemetry.events (timestamp, device_id, kind) VALUES (now(), 11, 'x')",
    )
    assert_refused(
        roles.conninfo("sink"),
        "DELETE FROM telemetry.controller_status",
        "TRUNCATE telemetry.controller_status",
    )
    assert_refused(roles.conninfo("processor"), "SELECT * FROM telemetry.controller_status")


def test_certgen_runs_as_its_role_and_cannot_touch_telemetry(roles: Roles, tmp_path: Path) -> None:
    env = certgen_env(
        roles.owner, tmp_path / "ca", tmp_path / "issued", CERTGEN_ADMIN_TOKEN=ADMIN_TOKEN
    )
    env.update(roles.env("certgen"))
    # Start-up records the broker and service certificates (INSERT), then it serves.
    certgen = start_https(env, tmp_path / "certgen.log")
    try:
        with certgen.client() as http:
            # Enrolment: the claim-code hash (SELECT), the certificate (INSERT).
            body = {"mac": MAC1, "claim_code": roles.claim_codes[MAC1],
                    "csr_pem": make_csr(f"f2-{MAC1}")}  # fmt: skip
            enrolled = http.post("/v1/enroll", json=body)
            assert enrolled.status_code == 200, enrolled.text
            wrong = {"mac": MAC3, "claim_code": "2222-3333-4444-5555",
                     "csr_pem": make_csr(f"f2-{MAC3}")}  # fmt: skip
            assert http.post("/v1/enroll", json=wrong).status_code == 403
            # Revocation by MAC (UPDATE … RETURNING) and by serial (SELECT … FOR UPDATE).
            revoked = http.post(f"/v1/devices/{MAC1}/revoke", json={"reason": "superseded"},
                                headers=ADMIN)  # fmt: skip
            assert revoked.status_code == 200, revoked.text
            service = http.post("/v1/service-certificates", json={"name": "roles-test"},
                                headers=ADMIN)  # fmt: skip
            assert service.status_code == 201, service.text
            serial = service.json()["serial"]
            by_serial = http.post(f"/v1/certificates/{serial}/revoke",
                                  json={"reason": "key_compromise"}, headers=ADMIN)  # fmt: skip
            assert by_serial.status_code == 200, by_serial.text
            listed = http.get("/v1/certificates", params={"status": "revoked"}, headers=ADMIN)
            assert listed.status_code == 200, listed.text
            assert {c["serial"] for c in listed.json()["items"]} == {
                enrolled.json()["serial"],
                serial,
            }
            crl = x509.load_pem_x509_crl(http.get("/v1/crl.pem").content)
            assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
            assert http.get("/healthz").json()["database"] == "ok"
    finally:
        assert certgen.stop() == 0, certgen.log()
    log = certgen.log()
    assert roles.logins["certgen"].password not in log
    assert "permission denied" not in log

    assert_refused(
        roles.conninfo("certgen"),
        "INSERT INTO telemetry.readings VALUES (now(), 1, 1, 1.0)",
        "SELECT * FROM telemetry.events",
        "SELECT name FROM registry.devices",
        f"UPDATE registry.devices SET claim_code_hash = NULL WHERE mac = '{MAC2}'",
        "INSERT INTO registry.devices (device_type_id, name) VALUES (1, 'x')",
        "DELETE FROM registry.certificates",
        "UPDATE registry.certificates SET cn = 'svc-x'",
        "UPDATE registry.pins SET component = 'sensor-6'",
        "SELECT * FROM registry.claim_failures",
        "DELETE FROM registry.enrolment_lockouts",
    )


def test_a_sink_process_writes_as_its_role(
    roles: Roles, kafka_bootstrap: str, tmp_path: Path
) -> None:
    stack = Stack(kafka_bootstrap, roles.conninfo("sink"), tmp_path, partitions=1)
    stack.create_topics()
    readings = make_readings(200)
    try:
        stack.start()
        stack.produce([(0, batch(readings))])
        stack.produce([(0, batch(readings))])  # the same again: the merge path
        wait_until(lambda: stack.committed().get(0) == 2, 60, "both records committed")
    finally:
        for proc in stack.procs:
            proc.terminate()
            proc.wait(30)
    with psycopg.connect(roles.owner) as conn:
        assert conn.execute("SELECT count(*) FROM telemetry.readings").fetchone() == (200,)
    assert stack.dead_letters(0) == []
    assert "permission denied" not in stack.logs()


# --- a refused login: one line naming the settings ----------------------------------------------


@pytest.mark.parametrize("service", ["sink", "processor", "certgen", "simulator"])
def test_a_wrong_password_stops_each_service_with_one_line_naming_the_settings(
    roles: Roles, service: str, tmp_path: Path
) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    env = service_env(
        roles.env(service, password=wrong),
        CA_DIR=str(tmp_path / "ca"),
        ISSUED_DIR=str(tmp_path / "issued"),
        CERTGEN_ADMIN_TOKEN=ADMIN_TOKEN,
    )
    result = run_f2pipe(env, service)
    params = conninfo_to_dict(roles.owner)
    user = roles.logins[service].user
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"f2pipe {service}: PostgreSQL at 127.0.0.1:{params['port']}/{params['dbname']} "
        f"refused the login of POSTGRES_USER={user} (password authentication failed): "
        "check POSTGRES_PASSWORD"
    ]
    assert wrong not in result.stdout + result.stderr


def test_the_sink_names_timescale_settings_when_it_reads_them(roles: Roles) -> None:
    # The owner's POSTGRES_* are right; the telemetry login (TIMESCALE_*) is not.
    env = service_env(postgres_env(roles.owner), TIMESCALE_USER=roles.logins["sink"].user,
                      TIMESCALE_PASSWORD="not-it")  # fmt: skip
    result = run_f2pipe(env, "sink")
    assert result.returncode == 1
    assert f"refused the login of TIMESCALE_USER={roles.logins['sink'].user} " in result.stderr
    assert result.stderr.rstrip().endswith(
        "(password authentication failed): check TIMESCALE_PASSWORD"
    )


def test_operations_commands_name_the_owner_settings(roles: Roles, tmp_path: Path) -> None:
    owner = conninfo_to_dict(roles.owner)
    wrong = service_env(postgres_env(as_user(roles.owner, str(owner["user"]), "nope")))
    for args in (["migrate"], ["seed-demo", "--controllers", "1"], ["db-roles"]):
        env = {**wrong, "POSTGRES_SINK_PASSWORD": "x"} if args == ["db-roles"] else wrong
        result = run_f2pipe(env, *args)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.strip().endswith(
            "refused the login of POSTGRES_USER=postgres (password authentication failed): "
            "check POSTGRES_PASSWORD"
        ), args
    missing = {k: v for k, v in wrong.items() if k != "POSTGRES_PASSWORD"}
    result = run_f2pipe({**missing, "PGPASSFILE": str(tmp_path / "none")}, "migrate")
    assert result.returncode == 1
    assert result.stderr.strip().endswith("(no password given): set POSTGRES_PASSWORD")


def test_the_shared_helper_names_the_user_and_never_the_password(roles: Roles) -> None:
    params = conninfo_to_dict(roles.owner)
    settings = PostgresSettings(
        postgres_host="127.0.0.1",
        postgres_port=int(str(params["port"])),
        postgres_db=str(params["dbname"]),
        postgres_sslmode="disable",
        postgres_user="nobody_here",
        postgres_password=SecretStr("s3cret-never-shown"),
    )
    with pytest.raises(LoginRefused) as refusal:
        check_login(registry_login(settings), application_name="test")
    assert "POSTGRES_USER=nobody_here" in str(refusal.value)
    assert "s3cret" not in str(refusal.value)
    # A server that is not there is not a refusal: the services wait for it.
    down = settings.model_copy(update={"postgres_port": 1})
    check_login(registry_login(down), application_name="test", timeout=2)


# --- f2pipe db-roles ------------------------------------------------------------------------------


def test_db_roles_creates_rotates_and_refuses_privileged_roles(roles: Roles) -> None:
    owner_env = service_env(postgres_env(roles.owner))
    user = f"sink_cli_{uuid.uuid4().hex[:6]}"
    first = run_f2pipe({**owner_env, "POSTGRES_SINK_USER": user,
                        "POSTGRES_SINK_PASSWORD": "first-pw"}, "db-roles")  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert f"sink: login role {user} created, member of f2pipe_sink" in first.stdout
    assert "left alone (no password set): api, certgen, processor, simulator" in first.stdout
    assert "first-pw" not in first.stdout + first.stderr
    check_login_as(roles.owner, user, "first-pw")

    # Rotation: the same command with a new password.
    second = run_f2pipe({**owner_env, "POSTGRES_SINK_USER": user,
                         "POSTGRES_SINK_PASSWORD": "second-pw"}, "db-roles")  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert f"login role {user} password set" in second.stdout
    check_login_as(roles.owner, user, "second-pw")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        check_login_as(roles.owner, user, "first-pw")

    # Never a privileged role, never the owner.
    with psycopg.connect(roles.owner, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "admin_{user}" SUPERUSER')
    for name, why in ((f"admin_{user}", "exists with SUPERUSER"), ("postgres", "owner")):
        refused_run = run_f2pipe({**owner_env, "POSTGRES_SINK_USER": name,
                                  "POSTGRES_SINK_PASSWORD": "x"}, "db-roles")  # fmt: skip
        assert refused_run.returncode == 1
        assert why in refused_run.stderr

    nothing = run_f2pipe(owner_env, "db-roles")
    assert nothing.returncode == 2
    assert "POSTGRES_SINK_PASSWORD" in nothing.stderr


def test_a_login_role_belongs_to_exactly_one_service(roles: Roles) -> None:
    moved = roles.logins["sink"]
    apply_roles(roles.owner, [ServiceLogin("processor", moved.user, moved.password)])
    with psycopg.connect(roles.owner) as conn:
        groups = conn.execute(
            """SELECT array_agg(g.rolname) FROM pg_auth_members m
               JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
               WHERE u.rolname = %s""",
            (moved.user,),
        ).fetchone()
    assert groups == (["f2pipe_processor"],)


# --- the harness --------------------------------------------------------------------------------


def test_a_data_directory_made_with_trust_gets_passwords_on_its_next_start(
    servers_dir: Path,
) -> None:
    server = PostgresServer(servers_dir / f"legacy-{uuid.uuid4().hex[:6]}")
    with server:
        pass
    # As the harness left data directories before passwords: trust, no password file.
    (server.data_dir / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
    server.password_file.unlink()
    with server:
        with psycopg.connect(server.conninfo()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(as_user(server.conninfo(), "postgres", "old-trust"), connect_timeout=5)


# --- helpers ------------------------------------------------------------------------------------


def check_login_as(conninfo: str, user: str, password: str) -> None:
    with psycopg.connect(as_user(conninfo, user, password), connect_timeout=5) as conn:
        conn.execute("SELECT 1")


def run_f2pipe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "f2pipe", *args],
        env={**env, "LOG_FORMAT": "text"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(autouse=True)
def _no_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # libpq would fall back to these: a test of a missing password must really have none.
    for name in ("PGPASSWORD", "PGUSER"):
        monkeypatch.delenv(name, raising=False)
