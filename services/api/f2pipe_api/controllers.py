"""/v1/controllers: list (filter by site, search by MAC or name, paginated), read, register
(the claim code is returned once and stored as its scrypt hash), update, delete, and a new
claim code (rotation: returned once, only its hash stored, the audit row never holds it)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from f2pipe_api import registry_store
from f2pipe_api.deps import AUTH_REASONS, Admin, DbDep, Limit, MetricsDep, Offset, Operator, Viewer
from f2pipe_api.problems import PROBLEMS
from f2pipe_api.store import ConflictError, audit
from f2pipe_shared.claimcodes import generate_claim_code, hash_claim_code
from f2pipe_shared.problems import ProblemError
from f2pipe_shared.topics import normalize_mac

_HEX2 = "[0-9A-Fa-f]{2}"
# What `normalize_mac` accepts: 12 hex digits, or six pairs all separated by ':' or all by '-'.
MAC_PATTERN = f"^(?:[0-9A-Fa-f]{{12}}|{_HEX2}(?::{_HEX2}){{5}}|{_HEX2}(?:-{_HEX2}){{5}})$"
MAC_DESCRIPTION = (
    "the controller's eth0 MAC: 12 hex digits, optionally in pairs separated by ':' or '-'"
)
MacPath = Annotated[
    str, Path(pattern=MAC_PATTERN, description=MAC_DESCRIPTION, examples=["aabbccddee01"])
]
Name = Annotated[str, Field(min_length=1, max_length=200, examples=["Warehouse door 3"])]
Site = Annotated[str, Field(min_length=1, max_length=200, examples=["berlin-1"])]
Notes = Annotated[str, Field(max_length=4000)]

router = APIRouter(prefix="/v1/controllers", tags=["controllers"])

ConnectivityStatus = Literal["online", "offline", "unknown"]


class Controller(BaseModel):
    mac: str = Field(description="12 lowercase hex digits", examples=["aabbccddee01"])
    name: str
    site: str | None
    notes: str | None
    claim_code_pending: bool = Field(
        description="a claim code is stored: the controller may enrol with it"
    )
    created_at: datetime
    updated_at: datetime
    status: ConnectivityStatus = Field(
        "unknown",
        description="online, offline (nothing received for the processor's "
        "CONNECTIVITY_TIMEOUT), or unknown (never heard of)",
    )
    last_seen: datetime | None = Field(
        None, description="when the bridge last received a message of it (to within ~30 s)"
    )


class ControllerPage(BaseModel):
    total: int = Field(description="how many controllers match, over all pages")
    limit: int
    offset: int
    items: list[Controller]


class NewController(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mac: str = Field(pattern=MAC_PATTERN, description=MAC_DESCRIPTION, examples=["aabbccddee01"])
    name: Name
    site: Site | None = None
    notes: Notes | None = None

    @field_validator("mac")
    @classmethod
    def _normal(cls, value: str) -> str:
        return normalize_mac(value)


class RegisteredController(Controller):
    claim_code: str = Field(
        description="the claim code, shown this once (only its hash is stored)",
        examples=["7KQM-X4RT-9ZHC-PW2N"],
    )


class NewClaimCode(BaseModel):
    mac: str = Field(description="12 lowercase hex digits", examples=["aabbccddee01"])
    claim_code: str = Field(
        description="the new claim code, shown this once; the one before no longer enrols",
        examples=["7KQM-X4RT-9ZHC-PW2N"],
    )


class ControllerChanges(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    site: Site | None = None
    notes: Notes | None = None


def _mac(raw: str) -> str:
    return normalize_mac(raw)  # the path pattern already admitted it


def _unknown(mac: str) -> ProblemError:
    return ProblemError(
        "unknown_mac", "No controller with this MAC is registered.", context={"mac": mac}
    )


@router.get(
    "",
    response_model=ControllerPage,
    responses=PROBLEMS.responses(*AUTH_REASONS, "invalid_request"),
    summary="List controllers (viewer): filter by site or status, search by MAC or name",
)
async def list_controllers(
    caller: Viewer,
    db: DbDep,
    *,
    site: Annotated[str | None, Query(max_length=200)] = None,
    q: Annotated[
        str | None, Query(max_length=64, description="part of the MAC or the name")
    ] = None,
    status: Annotated[
        ConnectivityStatus | None, Query(description="only controllers with this status")
    ] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> ControllerPage:
    total, rows = await db.list_controllers(
        site=site, search=q, limit=limit, offset=offset, status=status
    )
    return ControllerPage(
        total=total, limit=limit, offset=offset, items=[Controller(**r) for r in rows]
    )


@router.get(
    "/{mac}",
    response_model=Controller,
    responses=PROBLEMS.responses(*AUTH_REASONS, "unknown_mac", "invalid_mac"),
    summary="One controller (viewer)",
)
async def get_controller(caller: Viewer, db: DbDep, mac: MacPath) -> Controller:
    row = await db.get_controller(_mac(mac))
    if row is None:
        raise _unknown(_mac(mac))
    return Controller(**row)


@router.post(
    "",
    status_code=201,
    response_model=RegisteredController,
    responses=PROBLEMS.responses(*AUTH_REASONS, "mac_taken", "invalid_mac", "invalid_request"),
    summary="Register a controller (operator); its claim code is in the answer, once",
)
async def create_controller(
    caller: Operator, db: DbDep, metrics: MetricsDep, body: NewController
) -> RegisteredController:
    code = generate_claim_code()
    hashed = await asyncio.to_thread(hash_claim_code, code)  # scrypt: a few ms of CPU
    try:
        row = await db.create_controller(caller.name, body.model_dump(), hashed)
    except ConflictError:
        raise ProblemError(
            "mac_taken", "A controller with this MAC is registered.", context={"mac": body.mac}
        ) from None
    metrics.changes.labels(action="controller.create").inc()
    return RegisteredController(**row, claim_code=code)


@router.patch(
    "/{mac}",
    response_model=Controller,
    responses=PROBLEMS.responses(*AUTH_REASONS, "unknown_mac", "invalid_mac", "invalid_request"),
    summary="Change a controller's name, site or notes (operator); null clears site or notes",
)
async def update_controller(
    caller: Operator, db: DbDep, metrics: MetricsDep, mac: MacPath, body: ControllerChanges
) -> Controller:
    changes: dict[str, Any] = body.model_dump(exclude_unset=True)
    if changes.get("name", "") is None:
        raise ProblemError("invalid_request", "body.name: may not be null")
    row = await db.update_controller(caller.name, _mac(mac), changes)
    if row is None:
        raise _unknown(_mac(mac))
    metrics.changes.labels(action="controller.update").inc()
    return Controller(**row)


@router.delete(
    "/{mac}",
    status_code=204,
    response_class=Response,
    responses=PROBLEMS.responses(*AUTH_REASONS, "unknown_mac", "invalid_mac"),
    summary="Delete a controller (admin); its certificates and telemetry stay as history",
)
async def delete_controller(
    caller: Admin, db: DbDep, metrics: MetricsDep, mac: MacPath
) -> Response:
    if await db.delete_controller(caller.name, _mac(mac)) is None:
        raise _unknown(_mac(mac))
    metrics.changes.labels(action="controller.delete").inc()
    return Response(status_code=204)


@router.post(
    "/{mac}/claim-code",
    response_model=NewClaimCode,
    responses=PROBLEMS.responses(*AUTH_REASONS, "unknown_mac", "invalid_mac"),
    summary="Rotate a controller's claim code (operator); the new one is in the answer, once",
)
async def rotate_claim_code(
    caller: Operator, db: DbDep, metrics: MetricsDep, mac: MacPath
) -> NewClaimCode:
    mac = _mac(mac)
    code = generate_claim_code()
    hashed = await asyncio.to_thread(hash_claim_code, code)  # scrypt: a few ms of CPU
    async with db.transaction() as conn:
        before = await registry_store.controller_row(conn, mac)
        if before is None:
            raise _unknown(mac)
        after = await registry_store.rotate_claim_code(conn, mac, hashed)
        # Rows of the controller as the API shows it: a flag says a code is pending, no code.
        await audit(conn, caller.name, "controller.rotate_claim_code", f"controller:{mac}",
                    before=before, after=after)  # fmt: skip
    metrics.changes.labels(action="controller.rotate_claim_code").inc()
    return NewClaimCode(mac=mac, claim_code=code)
