"""Operations commands: read settings, call the library, print what happened."""

from __future__ import annotations

import sys
from pathlib import Path

from f2pipe_shared import settings as s


def _registry_conninfo(override: str | None) -> str:
    return override or s.load(s.PostgresSettings).conninfo


def migrate(conninfo: str | None = None, directory: Path | None = None) -> int:
    policy = s.load(s.TelemetryPolicySettings)
    targets = [_registry_conninfo(conninfo)]
    if conninfo is None:
        telemetry = s.load(s.TimescaleSettings).conninfo(s.load(s.PostgresSettings))
        if telemetry != targets[0]:
            # Split deployment: both databases get the whole schema, so the label views
            # (which join registry and telemetry) work where the readings are.
            targets.append(telemetry)
    from f2pipe.migrate import apply_migrations, policy_gucs

    for target in targets:
        applied = apply_migrations(target, directory, settings=policy_gucs(policy))
        names = ", ".join(applied) if applied else "nothing to apply"
        print(f"migrate: {names}")
    return 0


def seed_demo(conninfo: str | None, controllers: int, claim_codes: Path | None) -> int:
    if controllers < 1:
        print("seed-demo: --controllers must be at least 1", file=sys.stderr)
        return 2
    target = _registry_conninfo(conninfo)
    from f2pipe.seed import seed_demo as seed

    result = seed(target, controllers, claim_codes)
    print(result.summary())
    if claim_codes is None and result.claim_codes:
        print("claim codes of the new controllers (shown once, store them now):")
        for mac, code in result.claim_codes.items():
            print(f"  {mac}  {code}")
    elif claim_codes is not None:
        print(f"claim codes of {len(result.claim_codes)} new controllers written to {claim_codes}")
    return 0
