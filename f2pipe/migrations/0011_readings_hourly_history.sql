-- Materialise the hourly aggregate over the readings already stored.
-- f2pipe:no-transaction
--
-- 0005 created telemetry.readings_hourly WITH NO DATA. Over a table that already held
-- readings, the refresh policy then materialised only its own window (the last 3 days);
-- the buckets before it, below the aggregate's watermark, were neither materialised nor
-- computed live, so they vanished from the aggregate (240 hourly buckets of 10 days of
-- readings became 71 after the policy's first run). This refreshes everything the backfill
-- policy of 0010 covers, up to the first policy's end offset, once, now.
--
-- refresh_continuous_aggregate() commits as it goes and is refused inside a transaction
-- block, hence no-transaction; a DO block at top level may call it. A refresh job running
-- at the same moment makes TimescaleDB refuse it (55P03): the runner waits and tries again
-- (f2pipe.migrate.LOCK_RETRY_PAUSES). Safe to re-run: a
-- refresh over buckets that are already up to date does nothing. TimescaleDB refreshes
-- only what was never materialised or has changed since, and never reaches back over
-- chunks that retention dropped (that would erase their hourly rows). On plain PostgreSQL
-- readings_hourly is a view: nothing to do.

DO $$
DECLARE
    effective jsonb;
    window_start timestamptz;
    window_end timestamptz;
BEGIN
    IF NOT telemetry.timescaledb_enabled() THEN
        RETURN;
    END IF;
    effective := telemetry.policies_in_effect();
    -- Nothing older than the refresh policy's window (a new database): nothing is missing.
    IF NOT EXISTS (
        SELECT 1 FROM telemetry.readings
        WHERE "timestamp" < now() - (effective ->> 'cagg_refresh_start_offset')::interval
    ) THEN
        RETURN;
    END IF;
    window_end := now() - (effective ->> 'cagg_refresh_end_offset')::interval;
    window_start := CASE effective ->> 'cagg_backfill'
        WHEN 'on' THEN now() - (effective ->> 'cagg_backfill_start_offset')::interval
        WHEN 'unbounded' THEN NULL
        -- backfill off: as far back as raw readings are certainly complete
        ELSE now() - least(
            (effective ->> 'retention')::interval, (effective ->> 'hourly_retention')::interval
        ) + INTERVAL '1 day'
    END;
    CALL refresh_continuous_aggregate('telemetry.readings_hourly', window_start, window_end);
END
$$;
