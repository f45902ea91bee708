-- Storage engine: TimescaleDB where the server has it, plain PostgreSQL otherwise.
--
-- The same migration files apply on both. This one decides, at run time, whether the
-- timescaledb extension is installed; every later migration asks
-- telemetry.timescaledb_enabled(), which reads pg_extension, so the decision is taken from the
-- database's real state and not from a setting that could differ between two runs.
--
-- Settings come from session GUCs that the migration runner sets (f2pipe.<name>); a setting
-- that is unset or empty takes the default written where it is read.

CREATE SCHEMA IF NOT EXISTS telemetry;

COMMENT ON SCHEMA telemetry IS
    'f2pipe time series: readings, events, hourly aggregates and the label views Grafana reads';

-- The text of setting f2pipe.<name>, or default_value when it is unset or empty.
CREATE OR REPLACE FUNCTION telemetry.setting(name text, default_value text)
RETURNS text
LANGUAGE sql
STABLE
AS $$
    SELECT coalesce(nullif(current_setting('f2pipe.' || name, true), ''), default_value)
$$;

-- Setting f2pipe.<name> as an interval. 'off' (or 'none') gives NULL where optional is true,
-- so a policy can be switched off; anything else that is not an interval stops the migration
-- with a message naming the setting, rather than a bare cast error.
CREATE OR REPLACE FUNCTION telemetry.interval_setting(
    name text,
    default_value text,
    optional boolean DEFAULT false
)
RETURNS interval
LANGUAGE plpgsql
STABLE
AS $$
DECLARE
    raw text := btrim(telemetry.setting(name, default_value));
BEGIN
    IF lower(raw) IN ('off', 'none') THEN
        IF optional THEN
            RETURN NULL;
        END IF;
        RAISE EXCEPTION 'f2pipe.% cannot be switched off', name;
    END IF;
    BEGIN
        RETURN raw::interval;
    EXCEPTION WHEN data_exception THEN
        RAISE EXCEPTION 'f2pipe.% = % is not an interval', name, quote_literal(raw)
            USING HINT = 'Use a PostgreSQL interval such as ''7 days'' or ''12 hours''.';
    END;
END
$$;

-- True when the timescaledb extension is installed in this database.
CREATE OR REPLACE FUNCTION telemetry.timescaledb_enabled()
RETURNS boolean
LANGUAGE sql
STABLE
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
$$;

-- f2pipe.timescaledb: 'auto' (default) installs the extension when the server offers it and
-- preloads it; 'on' requires it; 'off' does not install it (an extension someone else already
-- installed in this database is still used).
DO $$
DECLARE
    wanted text := lower(telemetry.setting('timescaledb', 'auto'));
    available boolean := EXISTS (
        SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'
    );
    -- CREATE EXTENSION on a server that offers the package but does not preload the library
    -- fails with FATAL and drops the connection: look before leaping.
    preloaded boolean := 'timescaledb' = ANY (string_to_array(
        translate(current_setting('shared_preload_libraries'), ' "', ''), ','
    ));
BEGIN
    IF wanted NOT IN ('auto', 'on', 'off') THEN
        RAISE EXCEPTION 'f2pipe.timescaledb must be auto, on or off, not %', quote_literal(wanted);
    END IF;
    IF wanted = 'off' OR telemetry.timescaledb_enabled() THEN
        RETURN;
    END IF;
    IF available AND preloaded THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
    ELSIF wanted = 'on' THEN
        RAISE EXCEPTION 'f2pipe.timescaledb = on, but this server cannot load TimescaleDB'
            USING HINT = CASE WHEN available
                THEN 'Add timescaledb to shared_preload_libraries and restart the server.'
                ELSE 'Install TimescaleDB 2.x on the server, or use plain PostgreSQL (auto).'
            END;
    ELSIF available THEN
        RAISE WARNING 'timescaledb is installed but not in shared_preload_libraries: '
            'f2pipe uses plain PostgreSQL tables';
    END IF;
END
$$;

-- Plain PostgreSQL has no time_bucket(): this one keeps queries portable. TimescaleDB buckets
-- intervals without months from the origin 2000-01-03 00:00 UTC (a Monday), so weekly buckets
-- start on Mondays; date_bin with the same origin gives the same buckets. Unlike TimescaleDB's,
-- it refuses intervals with months or years (date_bin cannot bin those).
DO $$
BEGIN
    IF to_regprocedure('time_bucket(interval, timestamp with time zone)') IS NULL THEN
        CREATE FUNCTION public.time_bucket(bucket_width interval, ts timestamptz)
        RETURNS timestamptz
        LANGUAGE sql
        IMMUTABLE
        PARALLEL SAFE
        AS $body$
            SELECT date_bin(bucket_width, ts, timestamptz '2000-01-03 00:00:00+00')
        $body$;
        COMMENT ON FUNCTION public.time_bucket(interval, timestamptz) IS
            'f2pipe stand-in for TimescaleDB time_bucket on plain PostgreSQL (date_bin, '
            'origin 2000-01-03 00:00 UTC). Drop it before installing TimescaleDB.';
    END IF;
END
$$;
