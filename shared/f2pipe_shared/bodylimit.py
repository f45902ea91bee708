"""Request body limit for the HTTP services: no body larger than the limit is read, let alone
parsed.

`BodyLimit` is an ASGI middleware around a whole app. A request whose Content-Length is over
the limit is refused before the app sees it; a chunked body (no Content-Length) is counted as
it streams in, and refused as soon as it passes the limit. Either way the answer is 413 with
the problem reason `body_too_large` (from the service's own `Problems` catalogue), and the
rest of the body is never read.

One limit holds for every path unless `overrides` names the path exactly (the api's bulk
import takes a file of megabytes; every other route a small JSON object): an override is the
limit for that path alone, so a large limit cannot leak to a route that does not expect it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from f2pipe_shared.problems import Problems

log = logging.getLogger(__name__)


class _TooLarge(Exception):
    """Raised from `receive` when a streamed body passes the limit."""


class BodyLimit:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        problems: Problems,
        hint: str,
        overrides: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.overrides = dict(overrides or {})  # exact path -> its own limit
        self.problems = problems
        self.hint = hint  # the second sentence of the refusal: what a request should be

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(scope, receive, send, limit)
            return

        received = 0
        too_large = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            if too_large:
                raise _TooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large:
                return  # the app's answer to the failed read; ours is the 413 below
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not too_large or started:
                raise
        if too_large and not started:
            await self._refuse(scope, receive, send, limit)

    def limit_for(self, path: str) -> int:
        return self.overrides.get(path, self.max_bytes)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        log.info(
            "request refused", extra={"path": scope.get("path", ""), "reason": "body_too_large"}
        )
        response = self.problems.response(
            "body_too_large",
            f"The request body is larger than {limit} bytes; {self.hint}",
            # The unread rest of the body makes the connection unusable for another request.
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
