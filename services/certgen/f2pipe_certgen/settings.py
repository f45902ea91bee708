"""What certgen reads: the CA group (shared: the simulator and broker-config read parts of
it) and the registry database."""

from __future__ import annotations

from dataclasses import dataclass

from f2pipe_shared.settings import CaSettings, CommonSettings, PostgresSettings, ServiceSettings


@dataclass(frozen=True)
class Settings(ServiceSettings):
    common: CommonSettings
    ca: CaSettings
    postgres: PostgresSettings
