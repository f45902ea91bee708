"""What the tests that run a whole `f2pipe dev` stack share."""

from __future__ import annotations

import tempfile
from pathlib import Path

from f2pipe_devtools.servers import MissingBinaryError
from f2pipe_devtools.servers.base import find_binary
from tests.conftest import missing


def dev_stack_top(prefix: str) -> Path:
    """A fresh directory for a stack, once the servers' binaries are known to be there
    (`missing` fails or skips otherwise). Not pytest's tmp_path: as root PostgreSQL runs as
    `postgres`, which cannot enter pytest's 0700 directories."""
    for binary in ("mosquitto", "redis-server"):
        try:
            find_binary(binary)
        except MissingBinaryError as exc:
            missing(exc)
    top = Path(tempfile.mkdtemp(prefix=prefix))
    top.chmod(0o755)
    return top
