"""/v1/tokens (list, create: the secret returned once, revoke) and /v1/audit, admin only;
/v1/me (any role): who the calling token is."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from f2pipe_api.deps import AUTH_REASONS, Admin, DbDep, Limit, MetricsDep, Offset, Viewer
from f2pipe_api.problems import PROBLEMS
from f2pipe_api.store import ConflictError
from f2pipe_api.tokens import NAME_PATTERN, Role, TokenInfo, generate_token, token_digest
from f2pipe_shared.problems import ProblemError

router = APIRouter(tags=["admin"])
TokenName = Annotated[str, Field(pattern=NAME_PATTERN, examples=["grafana-sync"])]


class Token(BaseModel):
    name: str
    role: Role
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, info: TokenInfo) -> Token:
        return cls(**vars(info))


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: TokenName
    role: Role
    expires_days: float | None = Field(None, gt=0, le=3650, description="valid for so many days")


class IssuedToken(Token):
    token: str = Field(description="the bearer token, shown this once (only its hash is stored)")


class Me(BaseModel):
    name: str = Field(description="the token's name, the audit log's actor")
    role: Role


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str = Field(description="the token's name (`cli` for f2pipe api-token)")
    action: str = Field(examples=["controller.create"])
    target: str = Field(examples=["controller:aabbccddee01"])
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[AuditEntry]


@router.get(
    "/v1/me",
    response_model=Me,
    responses=PROBLEMS.responses(*AUTH_REASONS),
    summary="Who the token is: its name and role (viewer); the console signs in with it",
)
async def me(caller: Viewer) -> Me:
    return Me(name=caller.name, role=caller.role)


@router.get(
    "/v1/tokens",
    response_model=list[Token],
    responses=PROBLEMS.responses(*AUTH_REASONS),
    summary="Every token, revoked ones included (admin); never a secret",
)
async def list_tokens(caller: Admin, db: DbDep) -> list[Token]:
    return [Token.of(t) for t in await db.list_tokens()]


@router.post(
    "/v1/tokens",
    status_code=201,
    response_model=IssuedToken,
    responses=PROBLEMS.responses(*AUTH_REASONS, "name_taken", "invalid_request"),
    summary="Create a token (admin); the secret is in the answer, once",
)
async def create_token(
    caller: Admin, db: DbDep, metrics: MetricsDep, body: NewToken
) -> IssuedToken:
    token = generate_token()
    try:
        info = await db.create_token(
            caller.name, body.name, body.role, token_digest(token), body.expires_days
        )
    except ConflictError:
        raise ProblemError("name_taken", "A token with this name exists.") from None
    metrics.changes.labels(action="token.create").inc()
    return IssuedToken(**vars(info), token=token)


@router.delete(
    "/v1/tokens/{name}",
    response_model=Token,
    responses=PROBLEMS.responses(*AUTH_REASONS, "unknown_token", "invalid_request"),
    summary="Revoke a token (admin); it stays listed, revoked",
)
async def revoke_token(
    caller: Admin,
    db: DbDep,
    metrics: MetricsDep,
    name: Annotated[str, Path(pattern=NAME_PATTERN)],
) -> Token:
    info = await db.revoke_token(caller.name, name)
    if info is None:
        raise ProblemError("unknown_token", "No token with this name.")
    metrics.changes.labels(action="token.revoke").inc()
    return Token.of(info)


@router.get(
    "/v1/audit",
    response_model=AuditPage,
    responses=PROBLEMS.responses(*AUTH_REASONS, "invalid_request"),
    summary="The audit log, newest first (admin): filter by target and actor",
)
async def audit(
    caller: Admin,
    db: DbDep,
    *,
    target: Annotated[
        str | None, Query(max_length=300, examples=["controller:aabbccddee01"])
    ] = None,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> AuditPage:
    total, rows = await db.list_audit(target=target, actor=actor, limit=limit, offset=offset)
    return AuditPage(total=total, limit=limit, offset=offset, items=[AuditEntry(**r) for r in rows])
