"""RFC 9457 problem details for the HTTP services (certgen, api): one format for every error.

A problem carries the standard members (type, title, status, detail) and a machine-readable
`reason` a client can branch on. Each service names its reasons in a `Problems` catalogue
(its type URIs, statuses and titles); the rest is shared: the models, `ProblemError`, and the
handlers that rewrite FastAPI's own errors (validation 422, unknown route 404, wrong method
405, an unreachable database 503) into the same shape, never echoing a value the client sent.
Imported only by services that depend on FastAPI and psycopg's pool.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from psycopg import DataError, OperationalError
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
# The rule a field's own validator enforces, said instead of its message (which may quote the
# value sent); pydantic's other messages name only the rule (length, pattern, type).
FIELD_RULES: Final[Mapping[str, str]] = {
    "mac": "must be 12 hex digits, optionally in pairs separated by ':' or '-'",
}
_CUSTOM_MESSAGE_TYPES = frozenset({"value_error", "assertion_error"})
_MAC_ERROR_TYPES = frozenset({"value_error", "string_pattern_mismatch"})
# A location part that is not a plain name (an extra key sent) is not echoed either.
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_UNSTORABLE = (
    "A value in the request cannot be stored or searched for (a NUL character in text, or a"
    " number out of range)."
)
_INVALID_JSON = "The body must be a UTF-8 JSON object (Content-Type: application/json)."


@dataclass(frozen=True)
class Reason:
    status: int
    title: str


# The reasons every catalogue has, because the shared handlers answer with them.
COMMON_REASONS: Final[Mapping[str, Reason]] = {
    "body_too_large": Reason(413, "The request body is too large"),
    "invalid_json": Reason(422, "The request body is not valid JSON"),
    "invalid_request": Reason(422, "The request does not match the schema"),
    "invalid_mac": Reason(422, "Not a MAC address"),
    "not_found": Reason(404, "No such endpoint"),
    "method_not_allowed": Reason(405, "Method not allowed on this endpoint"),
    "unavailable": Reason(503, "A dependency is unavailable"),
    "internal_error": Reason(500, "Internal error"),
}


class FieldError(BaseModel):
    """One validation error: where and what, never the value sent (it may be a secret)."""

    loc: list[str | int] = Field(description="path to the offending field, e.g. body.mac")
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details, plus `reason`."""

    type: str = Field(
        description="URI naming the kind of problem: urn:f2pipe:<service>:problem:<reason>"
    )
    title: str = Field(description="short summary of the kind of problem")
    status: int = Field(description="the HTTP status code")
    detail: str = Field(description="what happened in this case, and what to do")
    reason: str = Field(description="machine-readable reason (the service's page lists them)")
    errors: list[FieldError] | None = Field(
        None, description="for validation problems: each offending field"
    )


class ProblemError(Exception):
    """Raise to answer with a problem; `headers` carry e.g. Retry-After or WWW-Authenticate.

    `context` (mac, cn, serial: never a secret) goes into the log line of the refusal.
    `cause` is the real reason when the answer hides it (`enrolment_refused` for an unknown
    MAC): the log line and the metrics name the cause, the client sees only `reason`.
    """

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        context: Mapping[str, object] | None = None,
        cause: str | None = None,
    ) -> None:
        super().__init__(f"{cause or reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.headers = dict(headers or {})
        self.context = dict(context or {})
        self.cause = cause or reason


@dataclass(frozen=True)
class Problems:
    """One service's catalogue: its type URI prefix and every reason it answers with (the
    common ones included). A reason's status never changes: clients may rely on it."""

    type_prefix: str
    reasons: Mapping[str, Reason]
    field_rules: Mapping[str, str] = field(default_factory=lambda: FIELD_RULES)

    def __post_init__(self) -> None:
        missing = set(COMMON_REASONS) - set(self.reasons)
        if missing:
            raise ValueError(f"a catalogue needs the common reasons: {sorted(missing)}")

    def response(
        self,
        reason: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        errors: list[FieldError] | None = None,
    ) -> JSONResponse:
        known = self.reasons[reason]
        body = Problem(
            type=self.type_prefix + reason,
            title=known.title,
            status=known.status,
            detail=detail,
            reason=reason,
            errors=errors,
        )
        return JSONResponse(
            body.model_dump(exclude_none=True),
            status_code=known.status,
            headers=dict(headers or {}),
            media_type=MEDIA_TYPE,
        )

    def responses(self, *reasons: str) -> dict[int | str, dict[str, Any]]:
        """OpenAPI `responses=` for a route: each status it can answer, its reasons listed."""
        by_status: dict[int, list[str]] = {}
        for reason in reasons:
            by_status.setdefault(self.reasons[reason].status, []).append(reason)
        return {
            status: {
                "description": "Problem; reason: " + ", ".join(f"`{r}`" for r in names),
                "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
            }
            for status, names in sorted(by_status.items())
        }

    def install_handlers(
        self, app: FastAPI, on_invalid: Callable[[str, str], None] | None = None
    ) -> None:
        """Answer every error as a problem; `on_invalid(path, reason)` hears of each 422 from
        request validation (certgen's enrolment metrics count those)."""

        def invalid(path: str, reason: str) -> None:
            log.info("request refused", extra={"path": path, "reason": reason})
            if on_invalid is not None:
                on_invalid(path, reason)

        async def on_validation(request: Request, exc: Exception) -> JSONResponse:
            assert isinstance(exc, RequestValidationError)
            errors = [self._field_error(e) for e in exc.errors()]
            reason, detail = self._classify(errors)
            invalid(request.url.path, reason)
            return self.response(reason, detail, errors=errors)

        async def on_http(request: Request, exc: Exception) -> JSONResponse:
            assert isinstance(exc, StarletteHTTPException)
            if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeError):
                # FastAPI's answer to a JSON body that is not UTF-8: it is not JSON either.
                invalid(request.url.path, "invalid_json")
                return self.response("invalid_json", _INVALID_JSON)
            return self._on_http(request, exc)

        async def on_problem(request: Request, exc: Exception) -> JSONResponse:
            assert isinstance(exc, ProblemError)
            # One structured line per refusal, naming what it was about and why.
            answered = {} if exc.cause == exc.reason else {"answered": exc.reason}
            log.warning(
                "request refused",
                extra={"path": request.url.path, **exc.context, "reason": exc.cause, **answered},
            )
            return self.response(exc.reason, exc.detail, headers=exc.headers)

        async def on_unavailable(request: Request, exc: Exception) -> JSONResponse:
            log.warning(
                "database unavailable",
                extra={"path": request.url.path, "error": type(exc).__name__},
            )
            return self.response(
                "unavailable",
                "The registry database is unreachable; retry later.",
                headers={"Retry-After": "5"},
            )

        async def on_data_error(request: Request, exc: Exception) -> JSONResponse:
            # SQLSTATE class 22: the database refused a value the schema let through (a NUL
            # character in text, a number beyond bigint). The input's fault, so a 422; the
            # value itself is never echoed.
            invalid(request.url.path, "invalid_request")
            return self.response("invalid_request", _UNSTORABLE)

        async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
            # Starlette logs the traceback itself when it re-raises after this response.
            return self.response("internal_error", "Something went wrong on our side; retry later.")

        app.add_exception_handler(ProblemError, on_problem)
        app.add_exception_handler(RequestValidationError, on_validation)
        app.add_exception_handler(StarletteHTTPException, on_http)
        app.add_exception_handler(DataError, on_data_error)
        app.add_exception_handler(OperationalError, on_unavailable)
        app.add_exception_handler(PoolTimeout, on_unavailable)
        app.add_exception_handler(Exception, on_unexpected)

    def _field_error(self, error: Mapping[str, Any]) -> FieldError:
        """Where and which rule, never the input: it may be a claim code, or text meant to end
        up in a log or a query."""
        loc = [_shown_loc(part) for part in error.get("loc", ())]
        kind = str(error.get("type"))
        name = loc[-1] if loc else ""
        msg = str(error.get("msg", ""))
        if isinstance(name, str) and name in self.field_rules and kind in _MAC_ERROR_TYPES:
            msg = self.field_rules[name]
        elif kind in _CUSTOM_MESSAGE_TYPES:
            msg = self.field_rules.get(str(name), "the value is not valid")
        return FieldError(loc=loc, msg=msg, type=kind)

    def _classify(self, errors: list[FieldError]) -> tuple[str, str]:
        if any(e.type == "json_invalid" for e in errors):
            return "invalid_json", _INVALID_JSON
        if any(e.loc[-1:] == ["mac"] and e.type in _MAC_ERROR_TYPES for e in errors):
            return "invalid_mac", (
                "A MAC is 12 hex digits, optionally in pairs separated by ':' or '-' "
                "(aa:bb:cc:dd:ee:01)."
            )
        where = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors)
        return "invalid_request", where or "The request does not match the schema."

    def _on_http(self, request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            return self.response(
                "method_not_allowed",
                f"{request.method} is not allowed on {request.url.path}.",
                headers=headers,
            )
        if exc.status_code == 404:
            return self.response(
                "not_found",
                f"No endpoint at {request.url.path}; see /openapi.json.",
                headers=headers,
            )
        # Other statuses Starlette raises by itself keep their status, in our format.
        return JSONResponse(
            {
                "type": "about:blank",
                "title": str(exc.detail),
                "status": exc.status_code,
                "detail": str(exc.detail),
                "reason": "http_error",
            },
            status_code=exc.status_code,
            headers=headers,
            media_type=MEDIA_TYPE,
        )


def document_problems(app: FastAPI, *, bearer: bool = False) -> None:
    """Generate `app`'s OpenAPI schema with the Problem model the `responses=` refer to; with
    `bearer`, the document declares the bearer-token scheme as its default security."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description,
                routes=app.routes,
            )  # fmt: skip
            add_problem_schemas(schema)
            if bearer:
                components = schema.setdefault("components", {})
                components.setdefault("securitySchemes", {})["bearer"] = {
                    "type": "http",
                    "scheme": "bearer",
                }
                schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def add_problem_schemas(openapi: dict[str, Any]) -> None:
    """Put Problem (referenced by `Problems.responses()`) into the schema's components."""
    _, top = models_json_schema(
        [(Problem, "serialization")], ref_template="#/components/schemas/{model}"
    )
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(top.get("$defs", {}))


def _shown_loc(part: object) -> str | int:
    if isinstance(part, int) or (isinstance(part, str) and _PLAIN_NAME.fullmatch(part)):
        return part
    return "<field>"
