"""The FastAPI dependencies the api's handlers declare (`db: DbDep`, `caller: Viewer`, …).

Each app carries its own `Parts` (`app.state.api`, set by `app.create_app`). `require(role)`
is the one way a route gets a caller: it reads `Authorization: Bearer <token>`, finds the
token by its SHA-256, and refuses a missing, wrong, expired or revoked token with 401 (and
`WWW-Authenticate: Bearer`) and a role below the route's with 403. The role a route needs is
kept on the dependency (`min_role`), so a test can read it from the route table.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request

from f2pipe_api.hub import Hub
from f2pipe_api.metrics import ApiMetrics
from f2pipe_api.ports import CertgenPort, Clock, CommandPort, DeadLetterPort
from f2pipe_api.store import PostgresStore
from f2pipe_api.tokens import Role, token_digest
from f2pipe_shared.problems import ProblemError

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="f2pipe-api"'}
# An Authorization header longer than this is no token of ours, and is not hashed.
MAX_TOKEN_LENGTH = 200


@dataclass(frozen=True)
class Parts:
    db: PostgresStore
    metrics: ApiMetrics
    clock: Clock
    # None: not configured; the routes that need it answer 503 (after the role check).
    certgen: CertgenPort | None = None
    dead_letters: DeadLetterPort | None = None
    commands: CommandPort | None = None
    command_timeout: float = 30.0  # seconds, when a command names no timeout
    stream: Hub | None = None  # the live stream's clients (hub.py); None: no Kafka to stream


@dataclass(frozen=True)
class Caller:
    """Who is calling: the token's name (the audit log's actor) and its role."""

    name: str
    role: Role


def attach(app: FastAPI, parts: Parts) -> None:
    app.state.api = parts


def parts(request: Request) -> Parts:
    attached: Parts = request.app.state.api
    return attached


def get_db(request: Request) -> PostgresStore:
    return parts(request).db


def get_metrics(request: Request) -> ApiMetrics:
    return parts(request).metrics


def get_certgen(request: Request) -> CertgenPort | None:
    return parts(request).certgen


def get_dead_letters(request: Request) -> DeadLetterPort | None:
    return parts(request).dead_letters


def get_commands(request: Request) -> CommandPort | None:
    return parts(request).commands


def get_stream(request: Request) -> Hub | None:
    return parts(request).stream


DbDep = Annotated[PostgresStore, Depends(get_db)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]
CertgenDep = Annotated[CertgenPort | None, Depends(get_certgen)]
DeadLettersDep = Annotated[DeadLetterPort | None, Depends(get_dead_letters)]
CommandsDep = Annotated[CommandPort | None, Depends(get_commands)]
StreamDep = Annotated[Hub | None, Depends(get_stream)]

# Pages: PostgreSQL's OFFSET is a bigint; bounding it here turns an absurd offset into a 422
# instead of an overflow inside the database.
MAX_OFFSET = 2**31 - 1
Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="rows to skip")]


class RoleCheck:
    """The dependency behind `require(role)`: a callable that knows its `min_role`."""

    def __init__(self, min_role: Role) -> None:
        self.min_role = min_role

    async def __call__(self, request: Request) -> Caller:
        p = parts(request)
        caller = await self._authenticate(request, p)
        if not caller.role.allows(self.min_role):
            p.metrics.auth_refusals.labels(reason="forbidden").inc()
            raise ProblemError(
                "forbidden",
                f"This needs the role {self.min_role.value} or higher; the token's role is "
                f"{caller.role.value}.",
                context={"token": caller.name},
            )
        return caller

    async def _authenticate(self, request: Request, p: Parts) -> Caller:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise self._refuse(p, "missing_token", "Send Authorization: Bearer <token>.")
        found = None
        if len(token) <= MAX_TOKEN_LENGTH:
            digest = token_digest(token)
            found = await p.db.token_by_digest(digest)
        if found is None or not hmac.compare_digest(found[1], digest):
            raise self._refuse(p, "wrong_token", "The token is not one the api issued.")
        info = found[0]
        if info.revoked_at is not None:
            raise self._refuse(p, "revoked_token", "The token has been revoked.", info.name)
        if info.expires_at is not None and info.expires_at <= p.clock.now():
            raise self._refuse(p, "expired_token", "The token has expired.", info.name)
        return Caller(info.name, info.role)

    @staticmethod
    def _refuse(p: Parts, reason: str, detail: str, name: str | None = None) -> ProblemError:
        p.metrics.auth_refusals.labels(reason=reason).inc()
        context = {} if name is None else {"token": name}
        return ProblemError(reason, detail, headers=CHALLENGE, context=context)


def require(role: Role) -> RoleCheck:
    return RoleCheck(role)


Viewer = Annotated[Caller, Depends(require(Role.viewer))]
Operator = Annotated[Caller, Depends(require(Role.operator))]
Admin = Annotated[Caller, Depends(require(Role.admin))]
AUTH_REASONS = ("missing_token", "wrong_token", "expired_token", "revoked_token", "forbidden")
