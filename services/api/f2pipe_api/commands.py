"""Commands to controllers: `POST /v1/controllers/{mac}/commands` (operator) stores the
command with its audit row, then publishes it (command_link); `GET` one command, or a
controller's history. States and what confirms what: command_rules, docs/api.md "Commands"."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from f2pipe_api import command_store
from f2pipe_api.command_rules import CommandRefused, plan
from f2pipe_api.controllers import MacPath, _mac
from f2pipe_api.deps import (
    AUTH_REASONS,
    CommandsDep,
    DbDep,
    Limit,
    MetricsDep,
    Offset,
    Operator,
    Viewer,
    parts,
)
from f2pipe_api.problems import PROBLEMS
from f2pipe_api.store import audit
from f2pipe_shared.problems import ProblemError

CommandStatus = Literal["queued", "sent", "confirmed", "timed_out", "failed"]
MAX_TIMEOUT = 3600.0

router = APIRouter(tags=["commands"])


class NewCommand(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connector: Literal["J1", "J2", "J3", "J4"]
    component: str = Field(
        min_length=1,
        max_length=32,
        description="strike-<1|2> (access-control-mode), siren-<1|2> (alarm-mode), "
        "reader-<1|2> (access-control-mode: its success signal)",
        examples=["strike-1"],
    )
    payload: JsonValue = Field(
        None,
        description='strike: {"power-flag": 0|1|2, "period": 0..255}; siren: 1|0; reader: '
        "1 (success) | 2 | 3 (failures); null or absent: report your state (strike, siren)",
        examples=[{"power-flag": 2, "period": 5}],
    )
    timeout: float | None = Field(
        None,
        ge=1,
        le=MAX_TIMEOUT,
        description="seconds until it is timed_out unless confirmed; default API_COMMAND_TIMEOUT",
    )


class Command(BaseModel):
    id: int
    mac: str
    connector: str
    component: str
    topic: str = Field(description="the cmnd topic it was published on")
    payload: JsonValue = Field(description="what was published (null: an empty payload)")
    status: CommandStatus
    actor: str = Field(description="the token that sent it")
    created_at: datetime
    deadline: datetime
    sent_at: datetime | None = Field(description="when the broker acknowledged it (PUBACK)")
    finished_at: datetime | None = Field(description="when it was confirmed, timed out or failed")
    reported_status: bool | None = Field(description="the status of the confirming report")
    reverted_at: datetime | None = Field(description="a toggle: when its revert was reported")
    detail: str | None = Field(description="why it timed out or failed")


class CommandPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[Command]


def _unknown(mac: str) -> ProblemError:
    return ProblemError(
        "unknown_mac", "No controller with this MAC is registered.", context={"mac": mac}
    )


@router.post(
    "/v1/controllers/{mac}/commands",
    status_code=202,
    response_model=Command,
    responses=PROBLEMS.responses(
        *AUTH_REASONS,
        "unknown_mac",
        "invalid_mac",
        "unknown_connector",
        "wrong_mode",
        "bad_command",
        "invalid_request",
        "commands_unavailable",
    ),
    summary="Send a command to a controller (operator); 202: stored and being published",
)
async def send_command(
    caller: Operator,
    db: DbDep,
    *,
    commands: CommandsDep,
    metrics: MetricsDep,
    request: Request,
    mac: MacPath,
    body: NewCommand,
) -> Command:
    if commands is None:
        raise ProblemError(
            "commands_unavailable", "API_MQTT_CERT_FILE is not set: the api sends no commands."
        )
    mac = _mac(mac)
    try:
        planned = plan(mac, body.connector, body.component, body.payload)
    except CommandRefused as exc:
        raise ProblemError(exc.reason, exc.detail) from None
    timeout = body.timeout if body.timeout is not None else parts(request).command_timeout
    async with db.transaction() as conn:
        found = await command_store.target(conn, mac, body.connector)
        if found is None:
            raise _unknown(mac)
        device_id, mode = found
        if mode is None:
            raise ProblemError(
                "unknown_connector",
                f"The controller has no connector {body.connector} configured.",
                context={"mac": mac},
            )
        if mode != planned.mode:
            raise ProblemError(
                "wrong_mode",
                f"{body.component} needs a connector in {planned.mode}; "
                f"{body.connector} is in {mode}.",
            )
        row = await command_store.insert(
            conn, device_id=device_id, mac=mac, connector=body.connector,
            component=body.component, plan=planned, actor=caller.name, seconds=timeout,
        )  # fmt: skip
        await audit(conn, caller.name, "command.send", f"controller:{mac}", before=None,
                    after=command_store.json_ready(row))  # fmt: skip
    metrics.changes.labels(action="command.send").inc()
    failed = await commands.send(row, planned.wire, timeout)
    return Command(**(failed or row))


@router.get(
    "/v1/controllers/{mac}/commands",
    response_model=CommandPage,
    responses=PROBLEMS.responses(*AUTH_REASONS, "unknown_mac", "invalid_mac", "invalid_request"),
    summary="A controller's commands (viewer), newest first",
)
async def list_commands(
    caller: Viewer,
    db: DbDep,
    *,
    mac: MacPath,
    status: Annotated[CommandStatus | None, Query()] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> CommandPage:
    mac = _mac(mac)
    if await db.get_controller(mac) is None:
        raise _unknown(mac)
    total, rows = await command_store.history(db, mac, status=status, limit=limit, offset=offset)
    return CommandPage(total=total, limit=limit, offset=offset, items=[Command(**r) for r in rows])


@router.get(
    "/v1/commands/{command_id}",
    response_model=Command,
    responses=PROBLEMS.responses(*AUTH_REASONS, "unknown_command", "invalid_request"),
    summary="One command and its status (viewer)",
)
async def get_command(
    caller: Viewer, db: DbDep, command_id: Annotated[int, Path(ge=1, le=2**63 - 1)]
) -> Command:
    row: dict[str, Any] | None = await command_store.get(db, command_id)
    if row is None:
        raise ProblemError("unknown_command", "No command with this id.")
    return Command(**row)
