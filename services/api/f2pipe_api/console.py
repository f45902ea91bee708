"""The operator console: static files served by the api at /console/ (docs/console.md).

The page holds no secret and needs no token to load; everything it shows it asks the api for
with the operator's bearer token (kept in the tab's sessionStorage), so no cookie is ever
sent and no request can be forged across sites. The front-end libraries are copied into
`console/vendor/` at build time from the npm registry's locked packages
(scripts/build-console.sh): nothing is fetched from elsewhere at run time.

Every response of the app carries the security headers below; the Content-Security-Policy
lets a page run only the console's own scripts and styles and talk only to this origin.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
VENDOR_FILES = ("htm-preact.js", "uPlot.esm.js", "uPlot.min.css")
PATH = "/console"

CSP = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "font-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))  # fmt: skip
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


def missing_assets(directory: Path = CONSOLE_DIR) -> list[str]:
    """The vendor files the console needs and does not have (the build step did not run)."""
    return [name for name in VENDOR_FILES if not (directory / "vendor" / name).is_file()]


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every HTTP response (a plain ASGI wrapper: streams pass)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [h for h in SECURITY_HEADERS if h[0] not in names]
                message["headers"] = [*message.get("headers", []), *extra]
                if scope["path"].startswith(PATH) and b"cache-control" not in names:
                    message["headers"].append((b"cache-control", b"no-cache"))
            await send(message)

        await self.app(scope, receive, with_headers)


def mount(app: FastAPI, directory: Path = CONSOLE_DIR) -> None:
    """Serve the console at /console/ and send / there."""
    app.mount(PATH, StaticFiles(directory=directory, html=True), name="console")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(f"{PATH}/", status_code=307)
