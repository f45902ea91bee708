"""A refused database login as one clear line: which user, why, and which setting to fix.

Every f2pipe process that logs into PostgreSQL describes a refusal the same way, naming the
settings it read and never the password:

    PostgreSQL at timescaledb:5432/f2pipe refused the login of POSTGRES_USER=sink (password
    authentication failed): check POSTGRES_PASSWORD

`Login` says where a connection string came from (`registry_login`: POSTGRES_*;
`telemetry_login`: each TIMESCALE_* that is set, else its POSTGRES_* twin; `conninfo_login`:
a --conninfo option). `check_login` tries one connection and raises `LoginRefused` when the
server refuses the credentials; an unreachable server is not its business (the services wait
for it). `explained` turns a refusal met anywhere inside its block into `LoginRefused`.

PostgreSQL reports a refused login without an SQLSTATE on the client side (libpq has only the
message text), so refusals are recognised by the server's and libpq's English messages.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from psycopg.conninfo import conninfo_to_dict

from f2pipe_shared.settings import PostgresSettings, TimescaleSettings

# What libpq and the server say when they refuse credentials, and how we put it.
_REFUSALS = (
    ("password authentication failed", "password authentication failed"),
    ("no password supplied", "no password given"),
    ("no pg_hba.conf entry", "no pg_hba.conf line admits this user from here"),
    ("pg_hba.conf rejects connection", "pg_hba.conf rejects this user from here"),
    ("peer authentication failed", "peer authentication failed"),
    ("ident authentication failed", "ident authentication failed"),
)
# With trust or peer authentication the server names a missing role; with a password it
# says "password authentication failed" whether the role exists or not.
_NO_ROLE = re.compile(r'role "[^"]*" does not exist')


class LoginRefused(RuntimeError):
    """PostgreSQL refused the credentials: a configuration error, not an outage."""


@dataclass(frozen=True)
class Login:
    """A connection string and the names of the settings its user and password came from."""

    conninfo: str = field(repr=False)
    user_setting: str
    password_setting: str

    @property
    def user(self) -> str:
        return str(conninfo_to_dict(self.conninfo).get("user", ""))

    @property
    def where(self) -> str:
        params = conninfo_to_dict(self.conninfo)
        host, port = params.get("host", "localhost"), params.get("port", "5432")
        return f"{host}:{port}/{params.get('dbname', '')}"


def registry_login(postgres: PostgresSettings) -> Login:
    """The registry database: POSTGRES_*."""
    return Login(postgres.conninfo, "POSTGRES_USER", "POSTGRES_PASSWORD")


def telemetry_login(timescale: TimescaleSettings, postgres: PostgresSettings) -> Login:
    """The telemetry database: each TIMESCALE_* that is set, else its POSTGRES_* twin."""
    user = "TIMESCALE_USER" if timescale.timescale_user else "POSTGRES_USER"
    password = "TIMESCALE_PASSWORD" if timescale.timescale_password else "POSTGRES_PASSWORD"
    return Login(timescale.conninfo(postgres), user, password)


def conninfo_login(conninfo: str, option: str = "--conninfo") -> Login:
    """A connection string given on the command line."""
    return Login(conninfo, f"the user of {option}", f"the password of {option}")


def refusal_reason(exc: BaseException) -> str | None:
    """Why PostgreSQL refused the login, when ``exc`` is such a refusal; None otherwise."""
    if not isinstance(exc, psycopg.OperationalError):
        return None
    text = str(exc)
    lowered = text.lower()
    for needle, reason in _REFUSALS:
        if needle in lowered:
            return reason
    return "no such role" if _NO_ROLE.search(text) else None


def refused(login: Login, reason: str) -> LoginRefused:
    """The one-line error for a refused login; names settings, never the password."""
    user = login.user
    who = f"{login.user_setting}={user}" if user else f"{login.user_setting} (unset)"
    if reason == "no password given":
        advice = f"set {login.password_setting}"
    elif reason == "no such role":
        advice = f"check {login.user_setting}, or create the role (`f2pipe db-roles`)"
    elif "pg_hba" in reason or reason.startswith(("peer", "ident")):
        advice = f"check {login.user_setting} and the server's pg_hba.conf"
    else:
        advice = f"check {login.password_setting}"
    return LoginRefused(
        f"PostgreSQL at {login.where} refused the login of {who} ({reason}): {advice}"
    )


def check_login(login: Login, *, application_name: str, timeout: int = 5) -> None:
    """Log in once and out again: LoginRefused if the server refuses the credentials.

    Any other failure (the server is down, unreachable, starting) is left to the caller's own
    connection handling, which waits for the database.
    """
    try:
        with psycopg.connect(
            login.conninfo, application_name=application_name, connect_timeout=timeout
        ):
            return
    except psycopg.OperationalError as exc:
        reason = refusal_reason(exc)
        if reason is not None:
            raise refused(login, reason) from None


@contextmanager
def explained(login: Login) -> Iterator[None]:
    """Within the block, a refused login to ``login`` raises LoginRefused instead."""
    try:
        yield
    except psycopg.OperationalError as exc:
        reason = refusal_reason(exc)
        if reason is None:
            raise
        raise refused(login, reason) from None
