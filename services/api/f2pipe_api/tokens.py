"""Bearer tokens and roles: what a token is, how it is stored, and the CLI's operations.

A token is `f2api_` + 32 random bytes in URL-safe base64 (43 characters). Only its SHA-256 is
stored (`registry.api_tokens.token_sha256`): a secret of 256 random bits needs no slow hash.
The api finds the row by that digest and compares it once more in constant time. Roles are
ordered: viewer < operator < admin; a route names the least role it needs.

`create_token`, `list_tokens` and `revoke_token` are the synchronous operations behind
`f2pipe api-token` (the API's /v1/tokens does the same in its own transactions); each change
writes one audit row, with the actor `cli`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

PREFIX = "f2api_"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
CLI_ACTOR = "cli"


class Role(StrEnum):
    viewer = "viewer"
    operator = "operator"
    admin = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANK = {Role.viewer: 0, Role.operator: 1, Role.admin: 2}


def generate_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class TokenInfo:
    name: str
    role: Role
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def public(self) -> dict[str, Any]:
        """What the audit log and the API show of a token: never its secret or digest."""
        return {
            "name": self.name,
            "role": self.role.value,
            "created_at": self.created_at.isoformat(),
            "expires_at": None if self.expires_at is None else self.expires_at.isoformat(),
            "revoked_at": None if self.revoked_at is None else self.revoked_at.isoformat(),
        }


TOKEN_COLUMNS = "name, role, created_at, expires_at, revoked_at, last_used_at"  # noqa: S105


def token_info(row: tuple[Any, ...]) -> TokenInfo:
    name, role, created, expires, revoked, used = row
    return TokenInfo(name, Role(role), created, expires, revoked, used)


class TokenExistsError(ValueError):
    """A token with this name exists (revoked ones keep their names)."""


class UnknownTokenError(LookupError):
    """No token with this name."""


def create_token(
    conninfo: str, name: str, role: Role, expires_days: float | None = None
) -> tuple[str, TokenInfo]:
    """A new token (the secret, returned once) and its row."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError("a token name is 1-64 letters, digits, '.', '_' or '-'")
    token = generate_token()
    expires = None if expires_days is None else timedelta(days=expires_days)
    with psycopg.connect(conninfo) as conn, conn.transaction():
        row = conn.execute(
            f"""INSERT INTO registry.api_tokens (name, role, token_sha256, expires_at)
                VALUES (%s, %s, %s, now() + %s) ON CONFLICT (name) DO NOTHING
                RETURNING {TOKEN_COLUMNS}""",  # noqa: S608 (constant column list)
            (name, role.value, token_digest(token), expires),
        ).fetchone()
        if row is None:
            raise TokenExistsError(name)
        info = token_info(row)
        audit(conn, CLI_ACTOR, "token.create", f"token:{name}", before=None, after=info.public())
    return token, info


def list_tokens(conninfo: str) -> list[TokenInfo]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            f"SELECT {TOKEN_COLUMNS} FROM registry.api_tokens ORDER BY name"  # noqa: S608
        ).fetchall()
    return [token_info(r) for r in rows]


def revoke_token(conninfo: str, name: str) -> TokenInfo:
    """Revoke (idempotent: a revoked token stays revoked at its first time)."""
    with psycopg.connect(conninfo) as conn, conn.transaction():
        before = conn.execute(
            f"SELECT {TOKEN_COLUMNS} FROM registry.api_tokens WHERE name = %s FOR UPDATE",  # noqa: S608
            (name,),
        ).fetchone()
        if before is None:
            raise UnknownTokenError(name)
        row = conn.execute(
            f"""UPDATE registry.api_tokens SET revoked_at = coalesce(revoked_at, now())
                WHERE name = %s RETURNING {TOKEN_COLUMNS}""",  # noqa: S608
            (name,),
        ).fetchone()
        assert row is not None
        info = token_info(row)
        audit(
            conn, CLI_ACTOR, "token.revoke", f"token:{name}",
            before=token_info(before).public(), after=info.public(),
        )  # fmt: skip
    return info


def audit(
    conn: psycopg.Connection[Any],
    actor: str,
    action: str,
    target: str,
    *,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    """One audit row, in the caller's transaction (the synchronous twin of the store's)."""
    conn.execute(AUDIT_INSERT, audit_row(actor, action, target, before, after))


# One audit row; the CLI (audit above) and the API's store (store.audit) both write it.
AUDIT_INSERT = """INSERT INTO registry.audit_log (actor, action, target, before, after)
                  VALUES (%s, %s, %s, %s, %s)"""


def audit_row(
    actor: str, action: str, target: str,
    before: dict[str, Any] | None, after: dict[str, Any] | None,
) -> tuple[str, str, str, Jsonb | None, Jsonb | None]:  # fmt: skip
    return actor, action, target, _json(before), _json(after)


def _json(value: dict[str, Any] | None) -> Jsonb | None:
    return None if value is None else Jsonb(value)
