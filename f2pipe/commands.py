"""Operations commands: read settings, call the library, print what happened."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from f2pipe_shared import settings as s
from f2pipe_shared.dblogin import Login, conninfo_login, explained, registry_login, telemetry_login

if TYPE_CHECKING:
    from f2pipe.migrate import JobStatus


def _registry(override: str | None) -> Login:
    return conninfo_login(override) if override else registry_login(s.load(s.PostgresSettings))


def _targets(conninfo: str | None) -> list[Login]:
    """The registry database, and the telemetry database when TIMESCALE_* names another."""
    targets = [_registry(conninfo)]
    if conninfo is None:
        telemetry = telemetry_login(s.load(s.TimescaleSettings), s.load(s.PostgresSettings))
        if telemetry.conninfo != targets[0].conninfo:
            targets.append(telemetry)
    return targets


def migrate(conninfo: str | None = None, directory: Path | None = None) -> int:
    policy = s.load(s.TelemetryPolicySettings)
    from f2pipe.migrate import apply_migrations, job_report, policy_gucs

    # Split deployment: both databases get the whole schema, so the label views (which join
    # registry and telemetry) work where the readings are.
    for target in _targets(conninfo):
        with explained(target):
            applied = apply_migrations(target.conninfo, directory, settings=policy_gucs(policy))
            jobs = job_report(target.conninfo)
        names = ", ".join(applied) if applied else "nothing to apply"
        print(f"migrate: {names}")
        # The migrations succeeded either way; a failing job is news for the operator.
        for line in _job_lines(jobs, only_failing=True):
            print(f"migrate: {line}")
    return 0


def _job_lines(jobs: list[JobStatus] | None, *, only_failing: bool) -> list[str]:
    """The TimescaleDB jobs' summary line, then one line per job (or per failing job)."""
    if jobs is None:
        return [] if only_failing else ["TimescaleDB is not installed here: no background jobs"]
    failing = [job for job in jobs if job.failing]
    summary = f"TimescaleDB jobs: {len(jobs)}, {len(failing)} failing"
    if failing:
        summary += " (docs/operations.md, 'TimescaleDB jobs')"
    shown = failing if only_failing else jobs
    return [summary, *(f"  {'FAILING ' if job.failing else ''}{job.describe()}" for job in shown)]


def db_check(conninfo: str | None = None, directory: Path | None = None) -> int:
    """Migrations up to date, and how every TimescaleDB job's last run ended; 1 if either is
    not as it should be (a pending or changed migration, a failing job)."""
    from f2pipe.migrate import job_report, migration_status

    healthy = True
    for target in _targets(conninfo):
        with explained(target):
            status = migration_status(target.conninfo, directory)
            jobs = job_report(target.conninfo)
        where = f"db-check [{target.where}]"
        if status.up_to_date:
            print(f"{where}: migrations up to date ({len(status.applied)} applied)")
        else:
            healthy = False
            print(
                f"{where}: migrations pending: {', '.join(status.pending) or '-'}; "
                f"changed since applied: {', '.join(status.changed) or '-'}"
            )
        for line in _job_lines(jobs, only_failing=False):
            print(f"{where}: {line}")
        healthy = healthy and not any(job.failing for job in jobs or [])
    return 0 if healthy else 1


def seed_demo(conninfo: str | None, controllers: int, claim_codes: Path | None) -> int:
    if controllers < 1:
        print("seed-demo: --controllers must be at least 1", file=sys.stderr)
        return 2
    target = _registry(conninfo)
    from f2pipe.seed import seed_demo as seed

    with explained(target):
        result = seed(target.conninfo, controllers, claim_codes)
    print(result.summary())
    if claim_codes is None and result.claim_codes:
        print("claim codes of the new controllers (shown once, store them now):")
        for mac, code in result.claim_codes.items():
            print(f"  {mac}  {code}")
    elif claim_codes is not None:
        print(f"claim codes of {len(result.claim_codes)} new controllers written to {claim_codes}")
    return 0


def db_roles(conninfo: str | None = None) -> int:
    """Each service's login role (POSTGRES_<SERVICE>_USER/_PASSWORD) in the databases it uses."""
    from f2pipe.dbroles import (
        REGISTRY_SERVICES,
        SERVICES,
        DbRolesError,
        DbRolesSettings,
        apply_roles,
        password_variable,
    )

    logins = s.load(DbRolesSettings).logins()
    if not logins:
        names = ", ".join(password_variable(service) for service in SERVICES)
        print(f"db-roles: no password set ({names}): nothing to do", file=sys.stderr)
        return 2
    targets = _targets(conninfo)
    for i, target in enumerate(targets):
        # One database: every role. Split: the registry's readers there, the sink in telemetry.
        services = SERVICES if len(targets) == 1 else REGISTRY_SERVICES if i == 0 else ("sink",)
        wanted = [login for login in logins if login.service in services]
        if not wanted:
            continue
        try:
            with explained(target):
                done = apply_roles(target.conninfo, wanted)
        except DbRolesError as exc:
            print(f"db-roles: {exc}", file=sys.stderr)
            return 1
        for line in done:
            print(f"db-roles: {line}")
    skipped = sorted(set(SERVICES) - {login.service for login in logins})
    if skipped:
        unset = ", ".join(password_variable(service) for service in skipped)
        print(f"db-roles: left alone (no password set): {', '.join(skipped)} ({unset})")
    return 0


def api_token_create(
    conninfo: str | None, name: str, role: str, expires_days: float | None = None
) -> int:
    """`f2pipe api-token create`: a new bearer token of the api, printed once."""
    from f2pipe_api import tokens

    if expires_days is not None and expires_days <= 0:
        print("f2pipe api-token: --expires must be a positive number of days", file=sys.stderr)
        return 2
    target = _registry(conninfo)
    with explained(target):
        try:
            secret, info = tokens.create_token(
                target.conninfo, name, tokens.Role(role), expires_days
            )
        except tokens.TokenExistsError:
            print(f"f2pipe api-token: a token named {name!r} exists", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(f"f2pipe api-token: {exc}", file=sys.stderr)
            return 2
    expires = info.expires_at.isoformat() if info.expires_at else "never"
    print(f"token {info.name} ({info.role.value}, expires {expires}); shown once:")
    print(secret)
    return 0


def api_token_list(conninfo: str | None) -> int:
    """`f2pipe api-token list`: every token with its role and dates, never a secret."""
    from f2pipe_api import tokens

    target = _registry(conninfo)
    with explained(target):
        listed = tokens.list_tokens(target.conninfo)
    for t in listed:
        state = "revoked" if t.revoked_at else "active"
        expires = t.expires_at.isoformat() if t.expires_at else "never"
        used = t.last_used_at.isoformat() if t.last_used_at else "never"
        print(f"{t.name}\t{t.role.value}\t{state}\texpires {expires}\tlast used {used}")
    return 0


def api_token_revoke(conninfo: str | None, name: str) -> int:
    """`f2pipe api-token revoke`: the token stops working at once; it stays listed."""
    from f2pipe_api import tokens

    target = _registry(conninfo)
    with explained(target):
        try:
            tokens.revoke_token(target.conninfo, name)
        except tokens.UnknownTokenError:
            print(f"f2pipe api-token: no token named {name!r}", file=sys.stderr)
            return 1
    print(f"token {name} revoked")
    return 0
