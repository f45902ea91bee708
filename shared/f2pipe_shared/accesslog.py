"""uvicorn's access log without query strings: one line per request names the method, the
path and the status, never what followed `?` (a client may put a claim code or a token
there by mistake, and log lines travel further than requests)."""

from __future__ import annotations

import logging

ACCESS_LOGGER = "uvicorn.access"


class WithoutQuery(logging.Filter):
    """Cut the query string off the path in uvicorn's access record.

    uvicorn logs `'%s - "%s %s HTTP/%s" %d'` with (client, method, path?query, version,
    status); the path itself is percent-encoded, so its first `?` starts the query.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


def drop_query_strings(logger: logging.Logger | None = None) -> None:
    """Install `WithoutQuery` on uvicorn's access logger (once)."""
    target = logger or logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, WithoutQuery) for f in target.filters):
        target.addFilter(WithoutQuery())
