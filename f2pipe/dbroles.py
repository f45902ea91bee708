"""`f2pipe db-roles`: the login role each service connects with, made or updated idempotently.

Migration 0009 creates one NOLOGIN group role per service with exactly the privileges that
service needs (`f2pipe_sink`, `f2pipe_processor`, `f2pipe_certgen`, `f2pipe_simulator`;
migration 0013 `f2pipe_api`). This
command, run by the schema's owner after `f2pipe migrate`, creates for each service whose
password is set (POSTGRES_<SERVICE>_PASSWORD) a LOGIN role named POSTGRES_<SERVICE>_USER and
makes it a member of that group; an existing one gets the password again (how a password is
rotated). The password is sent as a SCRAM-SHA-256 verifier computed by libpq here, so the
server stores a verifier, never sees the password, and cannot log it.

It refuses to turn the schema's owner (or the role it runs as) or an existing privileged role
(SUPERUSER, CREATEROLE, CREATEDB, REPLICATION, BYPASSRLS) into a service login, and takes a
login out of any other service's group: one login, one service's privileges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from pydantic import Field, SecretStr

from f2pipe_shared.settings import F2Settings

SERVICES = ("sink", "processor", "certgen", "simulator", "api")
GROUPS = {service: f"f2pipe_{service}" for service in SERVICES}
# The services that read the registry; the sink writes telemetry.
REGISTRY_SERVICES = ("processor", "certgen", "simulator", "api")
# Plain lowercase identifiers: what `psql -U` and a conninfo take without quoting.
ROLE_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"


class DbRolesSettings(F2Settings):
    """The login roles `f2pipe db-roles` makes: a role and a password per service."""

    postgres_sink_user: str = Field(
        "sink", pattern=ROLE_PATTERN, description="the sink's login role"
    )
    postgres_sink_password: SecretStr | None = Field(
        None, description="its password (secret); unset = leave the role alone"
    )
    postgres_processor_user: str = Field(
        "processor", pattern=ROLE_PATTERN, description="the processor's login role"
    )
    postgres_processor_password: SecretStr | None = Field(
        None, description="its password (secret); unset = leave the role alone"
    )
    postgres_certgen_user: str = Field(
        "certgen", pattern=ROLE_PATTERN, description="certgen's login role"
    )
    postgres_certgen_password: SecretStr | None = Field(
        None, description="its password (secret); unset = leave the role alone"
    )
    postgres_simulator_user: str = Field(
        "simulator", pattern=ROLE_PATTERN, description="the simulator's login role"
    )
    postgres_simulator_password: SecretStr | None = Field(
        None, description="its password (secret); unset = leave the role alone"
    )
    postgres_api_user: str = Field("api", pattern=ROLE_PATTERN, description="the api's login role")
    postgres_api_password: SecretStr | None = Field(
        None, description="its password (secret); unset = leave the role alone"
    )

    def logins(self) -> list[ServiceLogin]:
        """The services whose password is set, each with its role and password."""
        found = []
        for service in SERVICES:
            password: SecretStr | None = getattr(self, f"postgres_{service}_password")
            if password is not None and password.get_secret_value():
                user: str = getattr(self, f"postgres_{service}_user")
                found.append(ServiceLogin(service, user, password.get_secret_value()))
        return found


class DbRolesError(RuntimeError):
    """The roles cannot be made as asked (not migrated, a privileged role, a name twice)."""


@dataclass(frozen=True)
class ServiceLogin:
    service: str
    user: str
    password: str = field(repr=False)

    @property
    def group(self) -> str:
        return GROUPS[self.service]


def password_variable(service: str) -> str:
    return f"POSTGRES_{service.upper()}_PASSWORD"


def apply_roles(conninfo: str, logins: Sequence[ServiceLogin]) -> list[str]:
    """Create or update each service's login role in one transaction; what was done, a line
    per role (never a password)."""
    users = [login.user for login in logins]
    twice = sorted({user for user in users if users.count(user) > 1})
    if twice:
        raise DbRolesError(f"one login role for two services: {', '.join(twice)}")
    done: list[str] = []
    with (
        psycopg.connect(conninfo, autocommit=True, application_name="f2pipe-db-roles") as conn,
        conn.transaction(),
    ):
        _require_groups(conn, sorted({login.group for login in logins}))
        for login in logins:
            done.append(_apply(conn, login))
    return done


def _require_groups(conn: psycopg.Connection[Any], groups: list[str]) -> None:
    rows = conn.execute(
        "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (groups,)
    ).fetchall()
    missing = sorted(set(groups) - {row[0] for row in rows})
    if missing:
        raise DbRolesError(
            f"the group roles {', '.join(missing)} do not exist: run `f2pipe migrate` first"
        )


# pg_roles column -> the attribute as CREATE ROLE spells it.
_PRIVILEGED = {"rolsuper": "SUPERUSER", "rolcreaterole": "CREATEROLE", "rolcreatedb": "CREATEDB",
               "rolreplication": "REPLICATION", "rolbypassrls": "BYPASSRLS"}  # fmt: skip


def _apply(conn: psycopg.Connection[Any], login: ServiceLogin) -> str:
    setting = f"POSTGRES_{login.service.upper()}_USER"
    # The owner: the role this runs as, or the one that owns f2pipe's schemas.
    row = conn.execute(
        f"""SELECT r.rolname = current_user OR EXISTS (
                SELECT 1 FROM pg_namespace AS n
                WHERE n.nspname IN ('registry', 'telemetry') AND n.nspowner = r.oid
            ), {", ".join(f"r.{name}" for name in _PRIVILEGED)}
            FROM pg_roles AS r WHERE r.rolname = %s""",  # noqa: S608 - constants
        (login.user,),
    ).fetchone()
    if row is not None and row[0]:
        raise DbRolesError(
            f"{setting}={login.user} is the owner of f2pipe's schemas (or the role this runs "
            "as): a service must not log in as the owner"
        )
    if row is not None:
        flags = [name for name, on in zip(_PRIVILEGED.values(), row[1:], strict=True) if on]
        if flags:
            raise DbRolesError(
                f"role {login.user} exists with {', '.join(flags)}: f2pipe db-roles will not "
                f"make it the {login.service}'s login (choose another {setting})"
            )
    verifier = conn.pgconn.encrypt_password(
        login.password.encode(), login.user.encode(), b"scram-sha-256"
    ).decode("ascii")
    user = sql.Identifier(login.user)
    attributes = sql.SQL(
        "LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD {}"
    ).format(sql.Literal(verifier))
    if row is None:
        conn.execute(sql.SQL("CREATE ROLE {} WITH {}").format(user, attributes))
        what = "created"
    else:
        conn.execute(sql.SQL("ALTER ROLE {} WITH {}").format(user, attributes))
        what = "password set"
    if login.group not in _memberships(conn, login.user):
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(login.group), user))
    # One service's privileges: out of any other service's group this role was put in.
    for group in sorted(_memberships(conn, login.user) & set(GROUPS.values()) - {login.group}):
        conn.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(group), user))
    others = sorted(_memberships(conn, login.user) - {login.group})
    line = f"{login.service}: login role {login.user} {what}, member of {login.group}"
    if others:
        line += f" (also of {', '.join(others)}: it keeps their privileges)"
    return line


def _memberships(conn: psycopg.Connection[Any], user: str) -> set[str]:
    """The roles ``user`` is a direct member of."""
    rows = conn.execute(
        """SELECT g.rolname FROM pg_auth_members AS m
           JOIN pg_roles AS g ON g.oid = m.roleid
           JOIN pg_roles AS u ON u.oid = m.member
           WHERE u.rolname = %s""",
        (user,),
    ).fetchall()
    return {str(row[0]) for row in rows}
