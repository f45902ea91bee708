"""Per-service database roles where they are configured: docker-compose.yml and `f2pipe dev`.

No server needed: these read the compose file and the local stack's process environments.
Against a real PostgreSQL: test_db_roles.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from f2pipe_devtools.dev.ports import Ports
from f2pipe_devtools.dev.procs import Console
from f2pipe_devtools.dev.stack import DATABASE_SERVICES, SERVICES, DevOptions, DevStack

ROOT = Path(__file__).resolve().parents[2]
# Service (compose) -> the role it logs in with (the suffix of POSTGRES_<ROLE>_USER).
DATABASE_ROLES = {"certgen": "certgen", "ca-init": "certgen", "processor": "processor",
                  "sink": "sink", "simulator": "simulator"}  # fmt: skip


def compose_services() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    services: dict[str, dict[str, Any]] = data["services"]
    return services


def test_compose_gives_each_service_its_own_role_and_the_owner_s_password_to_no_service() -> None:
    services = compose_services()
    for name, role in DATABASE_ROLES.items():
        env = services[name]["environment"]
        upper = role.upper()
        assert env["POSTGRES_USER"] == f"${{POSTGRES_{upper}_USER:-{role}}}", name
        assert env["POSTGRES_PASSWORD"].startswith(f"${{POSTGRES_{upper}_PASSWORD:?"), name
    sink = services["sink"]["environment"]
    assert sink["TIMESCALE_USER"] == sink["POSTGRES_USER"]
    assert sink["TIMESCALE_PASSWORD"] == sink["POSTGRES_PASSWORD"]
    # The owner's password: the database and the migrate job, nothing else.
    with_owner = {
        name
        for name, service in services.items()
        if str((service.get("environment") or {}).get("POSTGRES_PASSWORD", "")).startswith(
            "${POSTGRES_PASSWORD:"
        )
    }
    assert with_owner == {"timescaledb", "migrate"}
    assert "POSTGRES_PASSWORD" not in services["bridge"]["environment"]


def test_compose_database_requires_scram_and_the_migrate_job_makes_the_roles() -> None:
    services = compose_services()
    database = services["timescaledb"]
    assert "--auth-host=scram-sha-256" in database["environment"]["POSTGRES_INITDB_ARGS"]
    assert "password_encryption=scram-sha-256" in database["command"]
    migrate = services["migrate"]
    command = " ".join(migrate["command"])
    assert command.index("f2pipe migrate") < command.index("f2pipe db-roles")
    assert command.index("f2pipe db-roles") < command.index("f2pipe seed-demo")
    for role in ("SINK", "PROCESSOR", "CERTGEN", "SIMULATOR", "API"):
        assert migrate["environment"][f"POSTGRES_{role}_PASSWORD"].startswith(
            f"${{POSTGRES_{role}_PASSWORD:?"
        )


def test_the_local_stack_gives_each_process_its_own_login(tmp_path: Path) -> None:
    stack = DevStack(DevOptions(tmp_path, Ports.from_base(31000)), Console())
    (tmp_path / "postgres").mkdir()  # the PostgreSQL harness's directory (its password)
    owner = stack.database_env("owner")
    assert owner["POSTGRES_USER"] == "postgres"
    assert owner["POSTGRES_PASSWORD"]
    passwords = {owner["POSTGRES_PASSWORD"]}
    for name in SERVICES:
        env = stack.service(name).env
        if name == "bridge":
            assert env["POSTGRES_PASSWORD"] == "", "the bridge uses no database"
            continue
        assert env["POSTGRES_USER"] == name
        assert env["POSTGRES_PASSWORD"] == owner[f"POSTGRES_{name.upper()}_PASSWORD"]
        passwords.add(env["POSTGRES_PASSWORD"])
    assert len(passwords) == 1 + len(DATABASE_SERVICES), "a password of its own for each"
    # Made once, kept 0600, the same on the next `dev up`.
    files = sorted(tmp_path.glob("postgres-*-password"))
    assert len(files) == len(DATABASE_SERVICES)
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    again = DevStack(DevOptions(tmp_path, Ports.from_base(31000)), Console())
    assert again.database_env("owner") == owner
    # What `dev up` prints and stores: a conninfo with no password in it.
    assert "password" not in stack.conninfo.replace("passfile", "")
    assert f"passfile={tmp_path.resolve() / 'postgres' / 'pgpass'}" in stack.conninfo
