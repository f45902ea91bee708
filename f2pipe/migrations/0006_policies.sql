-- Chunking, compression, retention and aggregate refresh, from the f2pipe.* settings.
--
-- telemetry.apply_policies() is idempotent (it replaces the policies it owns), so an operator
-- changes a setting later with
--     SET f2pipe.retention = '180 days'; SELECT telemetry.apply_policies();
-- or f2pipe.migrate.apply_settings(). It checks the settings on plain PostgreSQL too, where it
-- changes nothing, so a bad value is caught in development and not first in production.
--
-- The rules it enforces, and why:
--   * compress_after > replay_window: a replay (sink restart, PostgreSQL outage) writes rows up
--     to replay_window old with INSERT ... ON CONFLICT DO NOTHING, and that is slow or limited
--     on compressed chunks, so compression starts well after anything a replay may touch;
--   * cagg_refresh_start_offset >= replay_window: late rows older than the refresh window are
--     not re-aggregated by the policy;
--   * retention > cagg_refresh_start_offset: a refresh over a range whose raw chunks were dropped
--     would erase the hourly rows it had;
--   * cagg_refresh_start_offset - cagg_refresh_end_offset >= 2 hours: TimescaleDB wants a
--     refresh window of at least two buckets.

CREATE OR REPLACE FUNCTION telemetry.apply_policies()
RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    chunk interval := telemetry.interval_setting('chunk_interval', '1 day');
    events_chunk interval := telemetry.interval_setting('events_chunk_interval', '7 days');
    replay_window interval := telemetry.interval_setting('replay_window', '2 days');
    compress_age interval := telemetry.interval_setting('compress_after', '7 days', true);
    retention interval := telemetry.interval_setting('retention', '365 days', true);
    -- Events live as long as readings unless told otherwise.
    events_retention interval := telemetry.interval_setting(
        'events_retention', telemetry.setting('retention', '365 days'), true
    );
    hourly_retention interval := telemetry.interval_setting('hourly_retention', '730 days', true);
    refresh_start interval := telemetry.interval_setting('cagg_refresh_start_offset', '3 days');
    refresh_end interval := telemetry.interval_setting('cagg_refresh_end_offset', '1 hour');
    refresh_every interval :=
        telemetry.interval_setting('cagg_refresh_schedule_interval', '30 minutes');
    effective jsonb;
BEGIN
    IF compress_age <= replay_window THEN
        RAISE EXCEPTION 'f2pipe.compress_after (%) must be longer than f2pipe.replay_window (%)',
            compress_age, replay_window
            USING HINT = 'ON CONFLICT on compressed chunks is slow: compress only what no '
                'replay can touch.';
    END IF;
    IF refresh_start < replay_window THEN
        RAISE EXCEPTION 'f2pipe.cagg_refresh_start_offset (%) must be at least '
            'f2pipe.replay_window (%)', refresh_start, replay_window;
    END IF;
    IF refresh_start - refresh_end < INTERVAL '2 hours' THEN
        RAISE EXCEPTION 'the refresh window (f2pipe.cagg_refresh_start_offset % to '
            'f2pipe.cagg_refresh_end_offset %) must span at least two hourly buckets',
            refresh_start, refresh_end;
    END IF;
    IF retention <= refresh_start OR hourly_retention <= refresh_start THEN
        RAISE EXCEPTION 'f2pipe.retention (%) and f2pipe.hourly_retention (%) must be longer '
            'than f2pipe.cagg_refresh_start_offset (%)', retention, hourly_retention, refresh_start;
    END IF;
    IF chunk <= INTERVAL '0' OR events_chunk <= INTERVAL '0' OR refresh_every <= INTERVAL '0' THEN
        RAISE EXCEPTION 'chunk and schedule intervals must be positive';
    END IF;

    effective := jsonb_build_object(
        'timescaledb', telemetry.timescaledb_enabled(),
        'chunk_interval', chunk,
        'events_chunk_interval', events_chunk,
        'replay_window', replay_window,
        'compress_after', compress_age,
        'retention', retention,
        'events_retention', events_retention,
        'hourly_retention', hourly_retention,
        'cagg_refresh_start_offset', refresh_start,
        'cagg_refresh_end_offset', refresh_end,
        'cagg_refresh_schedule_interval', refresh_every
    );
    IF NOT telemetry.timescaledb_enabled() THEN
        RETURN effective;
    END IF;

    -- New chunks only; existing chunks keep the interval they were made with.
    PERFORM set_chunk_time_interval('telemetry.readings', chunk);
    PERFORM set_chunk_time_interval('telemetry.events', events_chunk);

    PERFORM remove_compression_policy('telemetry.readings', if_exists => true);
    PERFORM remove_compression_policy('telemetry.events', if_exists => true);
    IF compress_age IS NOT NULL THEN
        PERFORM add_compression_policy('telemetry.readings', compress_after => compress_age);
        PERFORM add_compression_policy('telemetry.events', compress_after => compress_age);
    END IF;

    PERFORM remove_retention_policy('telemetry.readings', if_exists => true);
    PERFORM remove_retention_policy('telemetry.events', if_exists => true);
    PERFORM remove_retention_policy('telemetry.readings_hourly', if_exists => true);
    IF retention IS NOT NULL THEN
        PERFORM add_retention_policy('telemetry.readings', drop_after => retention);
    END IF;
    IF events_retention IS NOT NULL THEN
        PERFORM add_retention_policy('telemetry.events', drop_after => events_retention);
    END IF;
    IF hourly_retention IS NOT NULL THEN
        PERFORM add_retention_policy('telemetry.readings_hourly', drop_after => hourly_retention);
    END IF;

    PERFORM remove_continuous_aggregate_policy('telemetry.readings_hourly', if_exists => true);
    PERFORM add_continuous_aggregate_policy(
        'telemetry.readings_hourly',
        start_offset => refresh_start,
        end_offset => refresh_end,
        schedule_interval => refresh_every
    );
    RETURN effective;
END
$$;

COMMENT ON FUNCTION telemetry.apply_policies() IS
    'Check the f2pipe.* settings and (with TimescaleDB) set chunk intervals, compression, '
    'retention and refresh policies from them; returns the settings in effect';

SELECT telemetry.apply_policies();
