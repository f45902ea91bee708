"""What the api reads: the registry database (POSTGRES_*), besides the common group every
service reads. Where it listens is on its command line (`--host`, `--port`)."""

from __future__ import annotations

from dataclasses import dataclass

from f2pipe_shared import settings as s


@dataclass(frozen=True)
class Settings(s.ServiceSettings):
    postgres: s.PostgresSettings
