"""What certgen reads: the CA group (shared: the simulator and broker-config read parts of
it) and the registry database, besides the common group every service reads."""

from __future__ import annotations

from dataclasses import dataclass

from f2pipe_shared import settings as s


@dataclass(frozen=True)
class Settings(s.ServiceSettings):
    ca: s.CaSettings
    postgres: s.PostgresSettings
