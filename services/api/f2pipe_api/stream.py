"""`GET /v1/stream` (viewer): the pipeline live, as Server-Sent Events.

Why SSE and not a WebSocket: the stream is one-way, SSE is plain HTTP(S) that every proxy
passes, and the browser console reads it with fetch() and a ReadableStream, which sends
`Authorization: Bearer` like every other call, so no token is put in a URL (and so in an
access log), and no handshake of our own is needed (docs/api.md "Live stream").

Frames: `reading`, `event`, `connectivity` (an event of kind connectivity), `command` (a
command's status change, `Hub.publish`), a `: heartbeat` comment every
API_STREAM_HEARTBEAT seconds, and `overflow` when the client's buffer (API_STREAM_BUFFER
items) is full; the stream then ends. A client that has stopped reading altogether cannot
receive even that: its buffer is freed at once and its connection is dropped after
OVERFLOW_GRACE seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import StringConstraints
from starlette.types import Receive, Scope, Send

from f2pipe_api.controllers import MAC_PATTERN
from f2pipe_api.deps import AUTH_REASONS, StreamDep, Viewer
from f2pipe_api.hub import Hub, Subscriber, frame
from f2pipe_api.problems import PROBLEMS
from f2pipe_shared.problems import ProblemError
from f2pipe_shared.topics import normalize_mac

log = logging.getLogger(__name__)

MAX_MACS = 100
OVERFLOW_GRACE = 5.0  # seconds a stalled client gets to take the overflow frame
HELLO = b": connected\n\n"  # sent at once: the client knows it is subscribed
HEARTBEAT = b": heartbeat\n\n"
MEDIA_TYPE = "text/event-stream"

router = APIRouter(tags=["stream"])

Mac = Annotated[str, StringConstraints(pattern=MAC_PATTERN)]

STREAM_DOC = """Server-Sent Events (`text/event-stream`), endless. Frames:
`event: reading` (mac, device_id, device, datapoint_id, datapoint, timestamp, value),
`event: event` and `event: connectivity` (mac, device_id, device, kind, timestamp, data),
`event: command` (mac, a command's id and status), `: heartbeat` comments, and
`event: overflow` before the server ends a stream whose client did not keep up."""


class EventStream(Response):
    """The ASGI response that writes one subscriber's items until it goes away."""

    media_type = MEDIA_TYPE

    def __init__(self, hub: Hub, sub: Subscriber, heartbeat: float) -> None:
        super().__init__(media_type=MEDIA_TYPE)
        self.hub = hub
        self.sub = sub
        self.heartbeat = heartbeat
        self.sending = False
        self.gone = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.sub.on_overflow = lambda: self._interrupt(task)
        watcher = asyncio.create_task(self._watch(receive))
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-store"),
                        (b"x-accel-buffering", b"no"),  # nginx: pass each frame on at once
                    ],
                }
            )
            if await self._pump(send, task):
                await self._overflowed(send)
            elif self.sub.closed and not self.gone:
                await self._end(send, frame("shutdown", {"detail": "the api is restarting"}))
        except asyncio.CancelledError:
            # Only the server cancels a stream: its graceful shutdown timed out (SIGTERM; an
            # endless response never finishes by itself). End it cleanly, not with a trace.
            task.uncancel()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            self.hub.unsubscribe(self.sub)

    async def _pump(self, send: Send, task: asyncio.Task[None]) -> bool:
        """Write until the client leaves (False) or overflows (True)."""
        await self._write(send, HELLO, task)
        sub = self.sub
        while not self.gone and not sub.closed:
            if sub.overflowed:
                return True
            if not sub.count:
                try:
                    async with asyncio.timeout(self.heartbeat):
                        await sub.wake.wait()
                except TimeoutError:
                    if not await self._write(send, HEARTBEAT, task):
                        return True
                continue
            chunk, n = sub.take()
            if not await self._write(send, chunk, task):
                return True
            self.hub.metrics.stream_items.inc(n)
        return False

    async def _write(self, send: Send, body: bytes, task: asyncio.Task[None]) -> bool:
        """One write; False when an overflow interrupted it (the client is not reading)."""
        self.sending = True
        try:
            await send({"type": "http.response.body", "body": body, "more_body": True})
        except asyncio.CancelledError:
            if self.sub.overflowed and task.uncancel() == 0:
                return False
            raise
        finally:
            self.sending = False
        return True

    def _interrupt(self, task: asyncio.Task[None]) -> None:
        # A write blocked on a client that does not read holds nothing of the hub's any more;
        # interrupt it so the stream can end.
        if self.sending:
            task.cancel()

    async def _overflowed(self, send: Send) -> None:
        body = frame("overflow", {"buffer": self.hub.buffer, "detail": "the client fell behind"})
        if not await self._end(send, body):
            log.info("a stream client took nothing for %s s after overflowing", OVERFLOW_GRACE)

    async def _end(self, send: Send, body: bytes) -> bool:
        """The last frame and the end of the response; False if the client took nothing."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(OVERFLOW_GRACE):
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return True
        return False

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        self.sub.wake.set()


@router.get(
    "/v1/stream",
    response_class=EventStream,
    status_code=200,
    responses={
        200: {
            "description": STREAM_DOC,
            "content": {MEDIA_TYPE: {"schema": {"type": "string"}}},
        },
        **PROBLEMS.responses(*AUTH_REASONS, "invalid_request", "stream_unavailable"),
    },
    summary="The pipeline live (viewer): readings, events, connectivity, commands (SSE)",
)
async def stream(
    caller: Viewer,
    hub: StreamDep,
    *,
    mac: Annotated[
        list[Mac] | None,
        Query(
            max_length=MAX_MACS,
            description=f"only these controllers (repeat it, at most {MAX_MACS}); none: all",
        ),
    ] = None,
) -> Response:
    del caller
    if hub is None:
        raise ProblemError("stream_unavailable", "The api has no Kafka to stream from.")
    sub = hub.subscribe(None if not mac else {normalize_mac(m) for m in mac})
    if sub is None:
        raise ProblemError(
            "stream_unavailable",
            f"{hub.max_clients} streams are open (API_STREAM_MAX_CLIENTS); retry later.",
            headers={"Retry-After": "10"},
        )
    return EventStream(hub, sub, hub.heartbeat)
