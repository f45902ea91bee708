"""Request body limit: no request body larger than `MAX_BODY_BYTES` is read, let alone parsed.

`BodyLimit` is the shared middleware (`f2pipe_shared.bodylimit`) with certgen's catalogue and
wording: a request over the limit is answered 413 `body_too_large` and never read further.
"""

from __future__ import annotations

from starlette.types import ASGIApp

from f2pipe_certgen.problems import PROBLEMS
from f2pipe_shared import bodylimit

# An enrolment (MAC, claim code, a CSR of at most 16 KiB) is a few KiB; 64 KiB leaves room.
MAX_BODY_BYTES = 64 * 1024


class BodyLimit(bodylimit.BodyLimit):
    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        super().__init__(
            app,
            max_bytes=max_bytes,
            problems=PROBLEMS,
            hint="requests to certgen are small JSON objects (an enrolment is a few KiB).",
        )
