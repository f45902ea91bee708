"""/v1/import and /v1/export: controllers with their connectors and pins, as CSV or JSON.

The formats and their rules are in bulk.py, the SQL in bulk_store.py; this module reads the
body (up to bulk.MAX_BODY_BYTES, the BodyLimit override for IMPORT_PATH), hashes the new
controllers' claim codes, and shapes the answers. docs/api.md, "Bulk import and export".
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from f2pipe_api import bulk, bulk_store
from f2pipe_api.deps import AUTH_REASONS, DbDep, MetricsDep, Operator, Viewer
from f2pipe_api.problems import PROBLEMS
from f2pipe_shared.claimcodes import generate_claim_code, hash_claim_code
from f2pipe_shared.problems import FieldError, ProblemError

IMPORT_PATH = "/v1/import"
EXPORT_PATH = "/v1/export"
CSV_MEDIA_TYPE = "text/csv"
JSON_MEDIA_TYPE = "application/json"

router = APIRouter(prefix="/v1", tags=["bulk"])


class ImportError_(BaseModel):
    line: int | None = Field(description="CSV: the line the row starts on (1 is the header)")
    loc: list[str | int] = Field(
        description="the column (CSV), or the path in the JSON document",
        examples=[["template"], ["controllers", 0, "connectors", 1, "pins", 0, "component"]],
    )
    reason: str = Field(examples=["unknown_template"], description="machine-readable")
    detail: str = Field(description="for a human; never repeats the value sent")


class Counts(BaseModel):
    created: int
    changed: int
    unchanged: int


class ImportReport(BaseModel):
    dry_run: bool = Field(description="true: nothing was changed (the default)")
    valid: bool = Field(description="no bad row: an apply of this file would succeed")
    rows: int = Field(description="data rows read (CSV lines, or pins and bare connectors)")
    controllers: Counts | None = Field(description="null when the file has errors")
    connectors: Counts | None
    pins: Counts | None
    errors: list[ImportError_] = Field(
        description=f"the bad rows, at most {bulk.MAX_REPORTED_ERRORS} (errors_total counts all)"
    )
    errors_total: int
    claim_codes_csv: str | None = Field(
        description="apply only: `mac,claim_code` of each new controller, shown this once",
        examples=["mac,claim_code\naabbccddee01,7KQM-X4RT-9ZHC-PW2N\n"],
    )


_IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": f"At most {bulk.MAX_BODY_BYTES} bytes and {bulk.MAX_ROWS} rows.",
        "content": {
            CSV_MEDIA_TYPE: {
                "schema": {"type": "string"},
                "example": (
                    ",".join(bulk.COLUMNS) + "\n"
                    "aabbccddee01,Warehouse door 3,berlin-1,,J3,sensor-mode,sensor-1,"
                    "environmental-sensor-v1,Cold room 1\n"
                ),
            },
            JSON_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/BulkDocument"}},
        },
    }
}


@router.post(
    "/import",
    response_model=ImportReport,
    openapi_extra=_IMPORT_BODY,
    responses=PROBLEMS.responses(
        *AUTH_REASONS, "import_invalid", "unsupported_media_type", "body_too_large"
    ),
    summary="Import controllers, connectors and pins from CSV or JSON (operator); "
    "dry run by default",
)
async def import_fleet(
    caller: Operator,
    db: DbDep,
    metrics: MetricsDep,
    request: Request,
    dry_run: Annotated[
        bool, Query(description="true (default): check and count, change nothing")
    ] = True,
) -> Response | ImportReport:
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    parse = {CSV_MEDIA_TYPE: bulk.parse_csv, JSON_MEDIA_TYPE: bulk.parse_json}.get(media_type)
    if parse is None:
        raise ProblemError(
            "unsupported_media_type", f"Send the file as {CSV_MEDIA_TYPE} or {JSON_MEDIA_TYPE}."
        )
    data = await request.body()
    parsed = await asyncio.to_thread(parse, data)
    plan, outcome = await bulk_store.run_import(
        db,
        lambda catalog: bulk.validate(parsed, catalog),
        actor=caller.name,
        dry_run=dry_run,
        hasher=hash_new_codes,
        audit_extra={
            "format": "csv" if media_type == CSV_MEDIA_TYPE else "json",
            "rows": len(parsed.rows),
            "bytes": len(data),
        },
    )
    if outcome is None and not dry_run:
        return _refusal(plan)
    if not dry_run:
        metrics.changes.labels(action="import.apply").inc()
    return _report(plan, outcome, dry_run=dry_run)


def _report(plan: bulk.Plan, outcome: bulk_store.Outcome | None, *, dry_run: bool) -> ImportReport:
    def counts(kind: str) -> Counts | None:
        return None if outcome is None else Counts(**vars(getattr(outcome, kind)))

    codes = outcome.claim_codes if outcome is not None else []
    return ImportReport(
        dry_run=dry_run,
        valid=not plan.errors,
        rows=plan.rows,
        controllers=counts("controllers"),
        connectors=counts("connectors"),
        pins=counts("pins"),
        errors=[_error(e) for e in plan.errors.items],
        errors_total=plan.errors.total,
        claim_codes_csv=bulk.claim_codes_csv(codes) if codes else None,
    )


def _error(e: bulk.BulkError) -> ImportError_:
    return ImportError_(line=e.line, loc=list(e.loc), reason=e.reason, detail=e.detail)


def _where(e: bulk.BulkError) -> list[str | int]:
    line: list[str | int] = [] if e.line is None else ["line", e.line]
    return line + list(e.loc)


def _refusal(plan: bulk.Plan) -> JSONResponse:
    """An apply with bad rows: nothing changed; each bad row as a problem's field error."""
    errors = [FieldError(loc=_where(e), msg=e.detail, type=e.reason) for e in plan.errors.items]
    first = plan.errors.items[0]
    where = f"line {first.line}" if first.line is not None else ".".join(map(str, first.loc))
    return PROBLEMS.response(
        "import_invalid",
        f"{plan.errors.total} errors, nothing was changed; the first, at {where}: "
        f"{first.reason}. Run with dry_run=true for the full report.",
        errors=errors,
    )


async def hash_new_codes(macs: Sequence[str]) -> list[tuple[str, str, str]]:
    """A new claim code and its scrypt hash for each MAC. scrypt (a few ms of CPU each)
    releases the GIL, so a thread per core hashes in parallel, off the event loop."""
    codes = [generate_claim_code() for _ in macs]
    hashes = await asyncio.to_thread(_hash_all, codes)
    return list(zip(macs, codes, hashes, strict=True))


def _hash_all(codes: list[str]) -> list[str]:
    if len(codes) < 2:
        return [hash_claim_code(c) for c in codes]
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        return list(pool.map(hash_claim_code, codes))


@router.get(
    "/export",
    response_model=bulk.BulkDocument,
    responses={
        200: {
            "content": {CSV_MEDIA_TYPE: {"schema": {"type": "string"}}},
            "description": "the registry's controllers as a file that imports back unchanged",
        },
        **PROBLEMS.responses(*AUTH_REASONS, "invalid_request"),
    },
    summary="Export every controller with its connectors and pins, as CSV or JSON (viewer)",
)
async def export_fleet(
    caller: Viewer,
    db: DbDep,
    format: Annotated[Literal["csv", "json"], Query(description="csv (default) or json")] = "csv",
) -> Response:
    rows = await bulk_store.export_rows(db)
    if format == "json":
        return JSONResponse(bulk.export_document(rows))
    return Response(
        bulk.export_csv(rows),
        media_type=CSV_MEDIA_TYPE + "; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="f2pipe-controllers.csv"'},
    )
