"""Apply the SQL migrations in ``f2pipe/migrations/`` in order, and remember which ran.

A migration is a file ``NNNN_name.sql``. Each pending file runs in its own transaction, together
with the row that records it in ``f2pipe_meta.schema_migrations`` (name, sha256, applied_at), so
a file is either applied and recorded or neither. A file whose first comment lines contain
``-- f2pipe:no-transaction`` runs statement by statement outside a transaction instead (for
``CREATE INDEX CONCURRENTLY`` and the like); such a file must be safe to re-run from the top,
because a failure half-way leaves it unrecorded.

A session advisory lock serialises runners, so two services starting at once apply each file
once. A file that changed after it was applied stops the run: migrations are history, and a
fix goes in a new file.

Settings: the SQL reads ``f2pipe.<name>`` session settings (see ``SETTINGS``), which
``apply_migrations(settings=...)`` sets before it runs anything.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import TupleRow

if TYPE_CHECKING:
    from f2pipe_shared.settings import TelemetryPolicySettings

log = logging.getLogger(__name__)

Connection = psycopg.Connection[TupleRow]

# Package data of this package (f2pipe/migrations/); `f2pipe migrate --directory` overrides.
MIGRATIONS_DIR = Path(str(files("f2pipe") / "migrations"))
NO_TRANSACTION_MARK = "-- f2pipe:no-transaction"

# Seconds between the tries of a no-transaction statement refused for a lock another session
# holds (55P03): about two minutes in all.
LOCK_RETRY_PAUSES: tuple[float, ...] = (1, 2, 5, 10, 20, 30, 30, 30)

# Any constant works as long as no other tool locks it: 'f2pipe' in ASCII.
ADVISORY_LOCK_KEY = 0x663270697065

# The f2pipe.* settings the migrations read, with the defaults the SQL applies when a setting
# is neither given nor remembered (f2pipe_meta.policy_settings, migration 0010).
SETTINGS: Mapping[str, str] = {
    "timescaledb": "auto",
    "chunk_interval": "1 day",
    "events_chunk_interval": "7 days",
    "replay_window": "2 days",
    "compress_after": "7 days",
    "retention": "365 days",
    "events_retention": "same as retention",
    "hourly_retention": "730 days",
    "cagg_refresh_start_offset": "3 days",
    "cagg_refresh_end_offset": "1 hour",
    "cagg_refresh_schedule_interval": "30 minutes",
    "cagg_backfill_start_offset": "auto",
    "cagg_backfill_schedule_interval": "1 day",
}

_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS f2pipe_meta;
CREATE TABLE IF NOT EXISTS f2pipe_meta.schema_migrations (
    name text PRIMARY KEY,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text NOT NULL DEFAULT current_user
);
"""


class MigrationError(RuntimeError):
    """A migration cannot be applied, or the recorded history does not match the files."""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    name: str
    sql: str
    checksum: str
    transactional: bool


@dataclass(frozen=True)
class AppliedMigration:
    """One row of f2pipe_meta.schema_migrations."""

    name: str
    checksum: str
    applied_at: datetime


@dataclass(frozen=True)
class MigrationStatus:
    """What the database has, compared with the files."""

    applied: list[AppliedMigration]
    pending: list[str]
    changed: list[str]  # applied, but the file's checksum differs now
    missing: list[str]  # applied, but no such file any more

    @property
    def up_to_date(self) -> bool:
        return not (self.pending or self.changed)


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """Read the migration files of ``directory`` (default: the project's), in apply order."""
    directory = directory or MIGRATIONS_DIR
    if not directory.is_dir():
        raise MigrationError(f"no migrations directory at {directory}")
    migrations: list[Migration] = []
    numbers: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lowercase_name.sql")
        if match.group(1) in numbers:
            raise MigrationError(f"{path.name} and {numbers[match.group(1)]} share a number")
        numbers[match.group(1)] = path.name
        migrations.append(_read_migration(path))
    return migrations


def _read_migration(path: Path) -> Migration:
    raw = path.read_bytes()
    # Line endings are a checkout detail (git autocrlf), not a change to the migration.
    checksum = hashlib.sha256(raw.replace(b"\r\n", b"\n")).hexdigest()
    sql = raw.decode("utf-8")
    return Migration(path.name, sql, checksum, transactional=not _wants_no_transaction(sql))


def _wants_no_transaction(sql: str) -> bool:
    """True when the header comment (the leading comment lines) carries the no-transaction mark."""
    for line in sql.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            return False
        if stripped == NO_TRANSACTION_MARK:
            return True
    return False


def setting_commands(settings: Mapping[str, str] | None) -> list[tuple[str, str]]:
    """Turn ``{"retention": "90 days"}`` into ``[("f2pipe.retention", "90 days")]``.

    Unknown names are refused: a misspelt setting would otherwise be silently ignored.
    """
    commands: list[tuple[str, str]] = []
    for key, value in (settings or {}).items():
        name = key.removeprefix("f2pipe.")
        if name not in SETTINGS:
            known = ", ".join(sorted(SETTINGS))
            raise ValueError(f"unknown migration setting {key!r} (known: {known})")
        commands.append((f"f2pipe.{name}", str(value)))
    return commands


def policy_gucs(policy: TelemetryPolicySettings) -> dict[str, str]:
    """The settings for the migrations from the TELEMETRY_* variables that are set.

    TELEMETRY_RETENTION covers readings and events alike; the hourly aggregate keeps its own,
    longer default. A variable that is not set is left out, so the database keeps what is in
    effect (what was given before, else the default) rather than being reset to the default.
    """
    given = policy.model_fields_set
    gucs: dict[str, str] = {}
    if "telemetry_retention" in given:
        gucs["retention"] = gucs["events_retention"] = policy.telemetry_retention
    if "telemetry_compress_after" in given:
        gucs["compress_after"] = policy.telemetry_compress_after
    if "telemetry_chunk_interval" in given:
        gucs["chunk_interval"] = policy.telemetry_chunk_interval
    return gucs


def apply_migrations(
    conninfo: str,
    directory: Path | None = None,
    settings: Mapping[str, str] | None = None,
) -> list[str]:
    """Apply every pending migration, in order; return the names applied by this call.

    Safe to run any number of times, also from several processes at once.
    """
    migrations = load_migrations(directory)
    commands = setting_commands(settings)
    with _connect(conninfo) as conn, _advisory_lock(conn):
        _set_settings(conn, commands)
        with conn.transaction():
            # "schema already exists, skipping" on every run is noise, not news.
            conn.execute("SET LOCAL client_min_messages = warning")
            conn.execute(_BOOTSTRAP)
        applied = {m.name: m for m in _read_applied(conn)}
        _refuse_changed(migrations, applied)
        done: list[str] = []
        for migration in migrations:
            if migration.name not in applied:
                _apply_one(conn, migration)
                done.append(migration.name)
        return done


def migration_status(conninfo: str, directory: Path | None = None) -> MigrationStatus:
    """Compare the database's migration history with the files; changes nothing."""
    migrations = load_migrations(directory)
    with _connect(conninfo) as conn:
        applied = _read_applied(conn)
    by_name = {m.name: m for m in applied}
    files = {m.name: m for m in migrations}
    return MigrationStatus(
        applied=applied,
        pending=[m.name for m in migrations if m.name not in by_name],
        changed=[m.name for m in migrations if _checksum_differs(m, by_name)],
        missing=[m.name for m in applied if m.name not in files],
    )


def apply_settings(conninfo: str, settings: Mapping[str, str]) -> dict[str, Any]:
    """Change chunking, compression, retention and refresh policies: those named in ``settings``.

    Migrations read the settings once, when they run; this is how a later change takes effect.
    A setting not in ``settings`` keeps what is in effect; ``"default"`` goes back to the
    default. TimescaleDB's jobs are altered in place (same ids). Returns the settings in
    effect, as telemetry.apply_policies() reports them.
    """
    commands = setting_commands(settings)
    with _connect(conninfo) as conn, _advisory_lock(conn):
        _set_settings(conn, commands)
        with conn.transaction():
            row = conn.execute("SELECT telemetry.apply_policies()").fetchone()
    assert row is not None
    effective: dict[str, Any] = row[0]
    return effective


@dataclass(frozen=True)
class JobStatus:
    """One TimescaleDB background job and how its last run ended (job_stats, job_errors)."""

    job_id: int
    name: str  # application_name, e.g. "Columnstore Policy [1000]"
    proc: str  # schema.procedure
    relation: str | None  # the hypertable or continuous aggregate it works on
    scheduled: bool
    last_run_status: str | None  # "Success", "Failed", or None: never ran
    last_run_started_at: datetime | None
    last_successful_finish: datetime | None
    next_start: datetime | None
    total_runs: int
    total_failures: int
    error: str | None  # the most recent failure: "SQLSTATE: message"
    error_at: datetime | None

    @property
    def failing(self) -> bool:
        return self.last_run_status == "Failed"

    @property
    def known_portal_issue(self) -> bool:
        """The failure TimescaleDB 2.28.x reports on PostgreSQL 15.20 after the job did its
        work (docs/operations.md)."""
        return self.failing and (self.error or "").startswith(
            '24000: cannot drop portal "" while it is being set up'
        )

    def describe(self) -> str:
        """One line: which job, on what, its last run."""
        on = f" on {self.relation}" if self.relation else ""
        if self.last_run_status is None:
            last = "never ran"
        else:
            started = _when(self.last_run_started_at)
            last = f"last run {self.last_run_status.lower()} ({started})"
        state = "" if self.scheduled else ", paused"
        failures = ""
        if self.total_failures:
            failures = f", {self.total_failures} of {self.total_runs} runs failed"
        line = f"job {self.job_id} {self.name} ({self.proc}{on}): {last}{failures}{state}"
        if self.failing:
            line += f"; error: {self.error or 'none recorded'}"
            if self.known_portal_issue:
                line += (
                    " [known TimescaleDB 2.28 issue on PostgreSQL 15.20: the job did its work"
                    " before this error; see docs/operations.md]"
                )
        return line


_JOBS_QUERY = """
SELECT j.job_id, j.application_name, j.proc_schema || '.' || j.proc_name,
       CASE WHEN j.hypertable_name IS NOT NULL
            THEN format('%I.%I', j.hypertable_schema, j.hypertable_name) END,
       j.scheduled, nullif(s.last_run_status, ''),
       CASE WHEN s.last_run_started_at > '-infinity' THEN s.last_run_started_at END,
       CASE WHEN s.last_successful_finish > '-infinity' THEN s.last_successful_finish END,
       CASE WHEN s.next_start > '-infinity' AND s.next_start < 'infinity' THEN s.next_start END,
       coalesce(s.total_runs, 0), coalesce(s.total_failures, 0),
       e.sqlerrcode || ': ' || e.err_message, e.finish_time
FROM timescaledb_information.jobs AS j
LEFT JOIN timescaledb_information.job_stats AS s ON s.job_id = j.job_id
LEFT JOIN LATERAL (
    SELECT er.sqlerrcode, er.err_message, er.finish_time
    FROM timescaledb_information.job_errors AS er
    WHERE er.job_id = j.job_id
    ORDER BY er.start_time DESC
    LIMIT 1
) AS e ON true
ORDER BY j.job_id
"""


def job_report(conninfo: str) -> list[JobStatus] | None:
    """Every TimescaleDB job with its last status; None without TimescaleDB (no jobs there).

    The scheduler's record, not the work: a job can be recorded failed after doing its work
    (TimescaleDB 2.28 on PostgreSQL 15.20), and a failing job is retried with back-off.
    """
    with _connect(conninfo) as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
        ).fetchone()
        if row is None or not row[0]:
            return None
        rows = conn.execute(_JOBS_QUERY).fetchall()
    return [JobStatus(*row) for row in rows]


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def _connect(conninfo: str) -> Connection:
    conn = psycopg.connect(conninfo, autocommit=True, application_name="f2pipe-migrate")
    # RAISE WARNING/NOTICE from the SQL (e.g. "TimescaleDB present but not preloaded") is for
    # the operator: route it to our log rather than dropping it.
    conn.add_notice_handler(_log_notice)
    return conn


def _log_notice(diag: psycopg.errors.Diagnostic) -> None:
    level = logging.WARNING if diag.severity_nonlocalized == "WARNING" else logging.INFO
    log.log(level, "postgres %s: %s", (diag.severity or "").lower(), diag.message_primary)


@contextmanager
def _advisory_lock(conn: Connection) -> Iterator[None]:
    """Hold the runner's session advisory lock; say so when another runner holds it first."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,)).fetchone()
    if row is None or not row[0]:
        log.info("another migration runner holds the lock; waiting for it")
        conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
    try:
        yield
    finally:
        # Closing the connection would release it too; unlocking keeps the session reusable.
        if not conn.closed and not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))


def _set_settings(conn: Connection, commands: list[tuple[str, str]]) -> None:
    for name, value in commands:
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))


def _read_applied(conn: Connection) -> list[AppliedMigration]:
    row = conn.execute("SELECT to_regclass('f2pipe_meta.schema_migrations')").fetchone()
    if row is None or row[0] is None:
        return []
    rows = conn.execute(
        "SELECT name, checksum, applied_at FROM f2pipe_meta.schema_migrations ORDER BY name"
    ).fetchall()
    return [AppliedMigration(name, checksum, applied_at) for name, checksum, applied_at in rows]


def _checksum_differs(migration: Migration, applied: Mapping[str, AppliedMigration]) -> bool:
    record = applied.get(migration.name)
    return record is not None and record.checksum != migration.checksum


def _refuse_changed(migrations: list[Migration], applied: Mapping[str, AppliedMigration]) -> None:
    changed = [m.name for m in migrations if _checksum_differs(m, applied)]
    if changed:
        raise MigrationError(
            f"applied migration(s) changed since they ran: {', '.join(changed)}. "
            "Restore the files as they were and put the change in a new migration."
        )


def _apply_one(conn: Connection, migration: Migration) -> None:
    log.info("applying migration %s", migration.name)
    try:
        if migration.transactional:
            with conn.transaction():
                conn.execute(migration.sql)
                _record(conn, migration)
        else:
            for statement in split_statements(migration.sql):
                _execute_retrying_locks(conn, statement)
            _record(conn, migration)
    except psycopg.Error as exc:
        raise MigrationError(f"{migration.name}: {_describe(exc)}") from exc


def _execute_retrying_locks(conn: Connection, statement: str) -> None:
    """Run one statement of a no-transaction file; when a lock another session holds refuses
    it (55P03: e.g. TimescaleDB's refresh of an aggregate its own job is refreshing), wait and
    try again, LOCK_RETRY_PAUSES, then give up (the file is safe to run again)."""
    for pause in (*LOCK_RETRY_PAUSES, None):
        try:
            conn.execute(statement)
            return
        except pg_errors.LockNotAvailable as exc:
            if pause is None:
                raise
            log.info("%s; trying again in %.0f s", exc.diag.message_primary, pause)
            time.sleep(pause)


def _record(conn: Connection, migration: Migration) -> None:
    conn.execute(
        "INSERT INTO f2pipe_meta.schema_migrations (name, checksum) VALUES (%s, %s)",
        (migration.name, migration.checksum),
    )


def _describe(exc: psycopg.Error) -> str:
    parts = [str(exc).strip()]
    if exc.diag.message_hint:
        parts.append(f"hint: {exc.diag.message_hint}")
    if exc.diag.context:
        parts.append(f"where: {exc.diag.context.strip()}")
    if isinstance(exc, pg_errors.ActiveSqlTransaction):
        parts.append(f"mark the file '{NO_TRANSACTION_MARK}' to run it outside a transaction")
    return "; ".join(parts)


# --- splitting a file into statements, for no-transaction migrations ---------------------------
#
# PostgreSQL runs a multi-statement query string as one implicit transaction, where
# CREATE INDEX CONCURRENTLY and friends are refused; so such a file is sent one statement at a
# time. The scanner knows just enough SQL lexing to find the semicolons that end statements:
# quotes, E'' escapes, dollar quotes, line and (nested) block comments.

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_IDENTIFIER_CHAR = re.compile(r"[A-Za-z0-9_$]")


def split_statements(sql: str) -> list[str]:
    """Split SQL text into statements at top-level semicolons; drop comment-only pieces."""
    statements: list[str] = []
    start = 0
    has_code = False
    for position, kind in _scan(sql):
        if kind == "code":
            has_code = True
        elif kind == "end":
            if has_code:
                statements.append(sql[start:position].strip())
            start, has_code = position + 1, False
    if has_code:
        statements.append(sql[start:].strip())
    return statements


def _scan(sql: str) -> Iterator[tuple[int, str]]:
    """Yield (position, 'code' | 'end') for code and statement-ending semicolons."""
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            i = _block_comment_end(sql, i)
        elif ch == ";":
            yield i, "end"
            i += 1
        elif ch.isspace():
            i += 1
        else:
            yield i, "code"
            i = _token_end(sql, i)


def _token_end(sql: str, i: int) -> int:
    """Index just past the quoted string, dollar-quoted string or single character at ``i``."""
    ch = sql[i]
    previous = sql[i - 1] if i else ""
    if ch == "'":
        backslashes = previous in "eE" and (i < 2 or not _IDENTIFIER_CHAR.match(sql[i - 2]))
        return _quote_end(sql, i, "'", backslashes)
    if ch == '"':
        return _quote_end(sql, i, '"', backslashes=False)
    if ch == "$" and not (previous and _IDENTIFIER_CHAR.match(previous)):
        tag = _DOLLAR_TAG.match(sql, i)
        if tag is not None:
            close = sql.find(tag.group(0), tag.end())
            if close < 0:
                raise MigrationError("unterminated dollar-quoted string")
            return close + len(tag.group(0))
    return i + 1


def _quote_end(sql: str, i: int, quote: str, backslashes: bool) -> int:
    j = i + 1
    while j < len(sql):
        if backslashes and sql[j] == "\\":
            j += 2
        elif sql[j] == quote:
            if sql.startswith(quote * 2, j):  # '' or "" is an escaped quote
                j += 2
            else:
                return j + 1
        else:
            j += 1
    raise MigrationError(f"unterminated {quote}-quoted text")


def _block_comment_end(sql: str, i: int) -> int:
    depth, j = 0, i
    while j < len(sql):
        if sql.startswith("/*", j):
            depth, j = depth + 1, j + 2
        elif sql.startswith("*/", j):
            depth, j = depth - 1, j + 2
            if depth == 0:
                return j
        else:
            j += 1
    raise MigrationError("unterminated /* comment")
