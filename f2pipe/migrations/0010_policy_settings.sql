-- Policy settings that stay in effect, jobs that are altered in place, and late data that
-- reaches the hourly aggregate.
--
-- 0006's telemetry.apply_policies() had two defects, fixed here by replacing it:
--   * every setting the session did not set fell back to its default, so changing one
--     (SET f2pipe.retention = '200 days') reset the others (compress_after, chunk_interval...)
--     to their defaults;
--   * it removed and re-added every job, so each call gave the jobs new ids (and lost their
--     run history).
-- Now a setting the session gives is remembered in f2pipe_meta.policy_settings, and a setting
-- the session does not give keeps what is there (the remembered value, else the default).
-- SET f2pipe.<name> = 'default' forgets the remembered value. Jobs are altered (alter_job,
-- same id); a job is added only when its policy was off, and deleted when it is switched off.
--
-- Late data: the refresh policy re-aggregates the last cagg_refresh_start_offset (3 days).
-- A reading that arrived later than that was never aggregated, and its bucket, below the
-- aggregate's watermark, was not computed live either. A second refresh policy on the same
-- aggregate, the "backfill" job (named 'f2pipe backfill: telemetry.readings_hourly'), covers
-- the window from cagg_backfill_start_offset up to where the first one starts, once a day.
-- TimescaleDB refreshes only the ranges that changed (its invalidation log), so a run with no
-- late data costs next to nothing. cagg_backfill_start_offset 'auto' (the default) reaches
-- back as far as raw readings are kept: least(retention, hourly_retention) - 1 day, never over
-- chunks that retention dropped (a refresh there would erase the hourly rows). TimescaleDB
-- allows several refresh policies on one aggregate as long as their windows do not overlap.
--
-- Migration 0011 materialises the history that is already there.

CREATE TABLE IF NOT EXISTS f2pipe_meta.policy_settings (
    name text PRIMARY KEY,
    value text NOT NULL,
    set_at timestamptz NOT NULL DEFAULT now(),
    set_by text NOT NULL DEFAULT current_user
);

COMMENT ON TABLE f2pipe_meta.policy_settings IS
    'f2pipe.* policy settings given explicitly to telemetry.apply_policies(); a setting not '
    'listed here has its default';

-- The text of policy setting <name>: the session's f2pipe.<name> when set (and not
-- 'default'), else the remembered value, else default_value.
CREATE OR REPLACE FUNCTION telemetry.policy_setting(name text, default_value text)
RETURNS text
LANGUAGE sql
STABLE
AS $$
    SELECT CASE
        WHEN lower(btrim(telemetry.setting(name, ''))) = 'default' THEN default_value
        ELSE coalesce(
            nullif(btrim(telemetry.setting(name, '')), ''),
            (SELECT s.value FROM f2pipe_meta.policy_settings AS s
             WHERE s.name = policy_setting.name),
            default_value
        )
    END
$$;

-- Policy setting <name> as an interval, with 0001's rules: 'off'/'none' gives NULL where
-- optional; anything else that is not an interval stops with a message naming the setting.
CREATE OR REPLACE FUNCTION telemetry.policy_interval(
    name text,
    default_value text,
    optional boolean DEFAULT false
)
RETURNS interval
LANGUAGE plpgsql
STABLE
AS $$
DECLARE
    raw text := btrim(telemetry.policy_setting(name, default_value));
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

-- The policy settings in effect (session, else remembered, else default), checked; changes
-- nothing. telemetry.apply_policies() applies what this returns.
CREATE OR REPLACE FUNCTION telemetry.policies_in_effect()
RETURNS jsonb
LANGUAGE plpgsql
STABLE
AS $$
DECLARE
    chunk interval := telemetry.policy_interval('chunk_interval', '1 day');
    events_chunk interval := telemetry.policy_interval('events_chunk_interval', '7 days');
    replay_window interval := telemetry.policy_interval('replay_window', '2 days');
    compress_age interval := telemetry.policy_interval('compress_after', '7 days', true);
    retention interval := telemetry.policy_interval('retention', '365 days', true);
    -- Events live as long as readings unless told otherwise.
    events_retention interval := telemetry.policy_interval(
        'events_retention', telemetry.policy_setting('retention', '365 days'), true
    );
    hourly_retention interval := telemetry.policy_interval('hourly_retention', '730 days', true);
    refresh_start interval := telemetry.policy_interval('cagg_refresh_start_offset', '3 days');
    refresh_end interval := telemetry.policy_interval('cagg_refresh_end_offset', '1 hour');
    refresh_every interval :=
        telemetry.policy_interval('cagg_refresh_schedule_interval', '30 minutes');
    backfill_raw text :=
        lower(btrim(telemetry.policy_setting('cagg_backfill_start_offset', 'auto')));
    backfill_start interval;
    backfill_unbounded boolean := false;
    backfill_every interval :=
        telemetry.policy_interval('cagg_backfill_schedule_interval', '1 day');
    -- Raw readings (and hourly rows) are complete from here on: retention drops whole chunks
    -- older than this. NULL: nothing is dropped.
    horizon interval := least(retention, hourly_retention);
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
    IF chunk <= INTERVAL '0' OR events_chunk <= INTERVAL '0' OR refresh_every <= INTERVAL '0'
        OR backfill_every <= INTERVAL '0'
    THEN
        RAISE EXCEPTION 'chunk and schedule intervals must be positive';
    END IF;

    -- The backfill window: [now - backfill_start, now - refresh_start], next to the first
    -- policy's window (TimescaleDB refuses overlapping windows), at least two buckets wide.
    IF backfill_raw = 'auto' THEN
        IF horizon IS NULL THEN
            backfill_unbounded := true;  -- nothing is ever dropped: from the first reading
        ELSIF horizon - INTERVAL '1 day' >= refresh_start + INTERVAL '2 hours' THEN
            backfill_start := horizon - INTERVAL '1 day';
        END IF;  -- else nothing is kept beyond the first window: no backfill job
    ELSE
        backfill_start := telemetry.policy_interval('cagg_backfill_start_offset', 'auto', true);
        IF backfill_start IS NOT NULL THEN
            IF backfill_start < refresh_start + INTERVAL '2 hours' THEN
                RAISE EXCEPTION 'f2pipe.cagg_backfill_start_offset (%) must be at least two '
                    'hours longer than f2pipe.cagg_refresh_start_offset (%)',
                    backfill_start, refresh_start
                    USING HINT = 'Or set it to auto, or off.';
            END IF;
            IF backfill_start >= horizon THEN
                RAISE EXCEPTION 'f2pipe.retention (%) and f2pipe.hourly_retention (%) must be '
                    'longer than f2pipe.cagg_backfill_start_offset (%)',
                    retention, hourly_retention, backfill_start
                    USING HINT = 'A refresh over dropped raw data would erase the hourly rows; '
                        'auto stays clear of it.';
            END IF;
        END IF;
    END IF;

    RETURN jsonb_build_object(
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
        'cagg_refresh_schedule_interval', refresh_every,
        -- NULL with backfill 'on': from the first reading (jsonb null cannot tell the two apart)
        'cagg_backfill', CASE
            WHEN backfill_unbounded THEN 'unbounded'
            WHEN backfill_start IS NULL THEN 'off'
            ELSE 'on'
        END,
        'cagg_backfill_start_offset', backfill_start,
        'cagg_backfill_schedule_interval', backfill_every
    );
END
$$;

COMMENT ON FUNCTION telemetry.policies_in_effect() IS
    'The f2pipe.* policy settings in effect (session, else f2pipe_meta.policy_settings, else '
    'default), checked; changes nothing';

-- The names apply_policies() remembers: every f2pipe.* setting of the policies.
CREATE OR REPLACE FUNCTION telemetry.policy_setting_names()
RETURNS text[]
LANGUAGE sql
IMMUTABLE
AS $$
    SELECT ARRAY[
        'chunk_interval', 'events_chunk_interval', 'replay_window', 'compress_after',
        'retention', 'events_retention', 'hourly_retention', 'cagg_refresh_start_offset',
        'cagg_refresh_end_offset', 'cagg_refresh_schedule_interval',
        'cagg_backfill_start_offset', 'cagg_backfill_schedule_interval'
    ]
$$;

-- The job of a policy (proc_name) on a relation; NULL when there is none. PL/pgSQL, not
-- SQL: a SQL body is checked when created, and plain PostgreSQL has no such view.
CREATE OR REPLACE FUNCTION telemetry.policy_job(proc text, relation regclass)
RETURNS integer
LANGUAGE plpgsql
STABLE
AS $$
BEGIN
    RETURN (
        SELECT min(j.job_id)
        FROM timescaledb_information.jobs AS j
        JOIN pg_class AS c ON c.oid = relation
        JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE j.proc_schema = '_timescaledb_functions'
          AND j.proc_name = proc
          AND j.hypertable_schema = n.nspname
          AND j.hypertable_name = c.relname
    );
END
$$;

-- Keep one policy job in step with an interval setting held in its config under <key>:
-- alter it when the value changed, add it when missing, delete it when the setting is off.
-- Returns the job's id (NULL when off).
CREATE OR REPLACE FUNCTION telemetry.sync_interval_policy(
    proc text,
    relation regclass,
    key text,
    wanted interval
)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    job integer := telemetry.policy_job(proc, relation);
    current_config jsonb;
BEGIN
    IF wanted IS NULL THEN
        IF job IS NOT NULL THEN
            PERFORM delete_job(job);
        END IF;
        RETURN NULL;
    END IF;
    IF job IS NULL THEN
        IF proc = 'policy_compression' THEN
            RETURN add_compression_policy(relation, compress_after => wanted);
        END IF;
        RETURN add_retention_policy(relation, drop_after => wanted);
    END IF;
    SELECT config INTO current_config FROM timescaledb_information.jobs WHERE job_id = job;
    IF (current_config ->> key)::interval IS DISTINCT FROM wanted THEN
        PERFORM alter_job(job,
            config => jsonb_set(current_config, ARRAY[key], to_jsonb(wanted::text)));
    END IF;
    RETURN job;
END
$$;

CREATE OR REPLACE FUNCTION telemetry.apply_policies()
RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    effective jsonb := telemetry.policies_in_effect();  -- checks first: nothing half-applied
    setting_name text;
    given text;
    cagg CONSTANT regclass := 'telemetry.readings_hourly';
    backfill_name CONSTANT text := 'f2pipe backfill: telemetry.readings_hourly';
    refresh_start interval := (effective ->> 'cagg_refresh_start_offset')::interval;
    refresh_end interval := (effective ->> 'cagg_refresh_end_offset')::interval;
    refresh_every interval := (effective ->> 'cagg_refresh_schedule_interval')::interval;
    backfill_every interval := (effective ->> 'cagg_backfill_schedule_interval')::interval;
    backfill_on boolean := effective ->> 'cagg_backfill' <> 'off';
    backfill_config jsonb;
    refresh_job integer;
    backfill_job integer;
    job_config jsonb;
    refresh_config jsonb;
BEGIN
    -- Remember what the session gave; 'default' forgets.
    FOREACH setting_name IN ARRAY telemetry.policy_setting_names() LOOP
        given := btrim(telemetry.setting(setting_name, ''));
        IF given = '' THEN
            CONTINUE;
        ELSIF lower(given) = 'default' THEN
            DELETE FROM f2pipe_meta.policy_settings AS s WHERE s.name = setting_name;
        ELSE
            INSERT INTO f2pipe_meta.policy_settings AS s (name, value)
            VALUES (setting_name, given)
            ON CONFLICT ON CONSTRAINT policy_settings_pkey DO UPDATE
                SET value = excluded.value, set_at = now(), set_by = current_user
                WHERE s.value IS DISTINCT FROM excluded.value;
        END IF;
    END LOOP;

    IF NOT telemetry.timescaledb_enabled() THEN
        RETURN effective;
    END IF;

    -- New chunks only; existing chunks keep the interval they were made with.
    IF (SELECT d.time_interval FROM timescaledb_information.dimensions AS d
        WHERE d.hypertable_schema = 'telemetry' AND d.hypertable_name = 'readings')
        IS DISTINCT FROM (effective ->> 'chunk_interval')::interval
    THEN
        PERFORM set_chunk_time_interval('telemetry.readings',
            (effective ->> 'chunk_interval')::interval);
    END IF;
    IF (SELECT d.time_interval FROM timescaledb_information.dimensions AS d
        WHERE d.hypertable_schema = 'telemetry' AND d.hypertable_name = 'events')
        IS DISTINCT FROM (effective ->> 'events_chunk_interval')::interval
    THEN
        PERFORM set_chunk_time_interval('telemetry.events',
            (effective ->> 'events_chunk_interval')::interval);
    END IF;

    PERFORM telemetry.sync_interval_policy('policy_compression', 'telemetry.readings',
        'compress_after', (effective ->> 'compress_after')::interval);
    PERFORM telemetry.sync_interval_policy('policy_compression', 'telemetry.events',
        'compress_after', (effective ->> 'compress_after')::interval);
    PERFORM telemetry.sync_interval_policy('policy_retention', 'telemetry.readings',
        'drop_after', (effective ->> 'retention')::interval);
    PERFORM telemetry.sync_interval_policy('policy_retention', 'telemetry.events',
        'drop_after', (effective ->> 'events_retention')::interval);
    PERFORM telemetry.sync_interval_policy('policy_retention', cagg,
        'drop_after', (effective ->> 'hourly_retention')::interval);

    -- The two refresh policies: the backfill job by its name, the first one is any other.
    SELECT min(j.job_id) FILTER (WHERE j.application_name LIKE backfill_name || '%'),
           min(j.job_id) FILTER (WHERE j.application_name NOT LIKE backfill_name || '%')
    INTO backfill_job, refresh_job
    FROM timescaledb_information.jobs AS j
    WHERE j.proc_name = 'policy_refresh_continuous_aggregate'
      AND j.hypertable_schema = 'telemetry' AND j.hypertable_name = 'readings_hourly';

    backfill_config := jsonb_build_object(
        'start_offset', to_jsonb((effective ->> 'cagg_backfill_start_offset')),
        'end_offset', to_jsonb(refresh_start::text)
    );

    -- TimescaleDB refuses windows that overlap, also for a moment: when the first window
    -- grows back in time, move the backfill window out of its way first.
    IF backfill_job IS NOT NULL THEN
        SELECT config INTO job_config FROM timescaledb_information.jobs WHERE job_id = backfill_job;
        IF NOT backfill_on THEN
            PERFORM delete_job(backfill_job);
            backfill_job := NULL;
        ELSIF refresh_start > (job_config ->> 'end_offset')::interval THEN
            PERFORM alter_job(backfill_job, config => job_config || backfill_config,
                schedule_interval => backfill_every);
        END IF;
    END IF;

    refresh_config := jsonb_build_object(
        'start_offset', to_jsonb(refresh_start::text),
        'end_offset', to_jsonb(refresh_end::text)
    );
    IF refresh_job IS NULL THEN
        refresh_job := add_continuous_aggregate_policy(cagg,
            start_offset => refresh_start,
            end_offset => refresh_end,
            schedule_interval => refresh_every
        );
    ELSE
        SELECT config INTO job_config FROM timescaledb_information.jobs WHERE job_id = refresh_job;
        IF job_config || refresh_config IS DISTINCT FROM job_config
            OR (SELECT schedule_interval FROM timescaledb_information.jobs
                WHERE job_id = refresh_job) IS DISTINCT FROM refresh_every
        THEN
            PERFORM alter_job(refresh_job, config => job_config || refresh_config,
                schedule_interval => refresh_every);
        END IF;
    END IF;

    IF backfill_on THEN
        IF backfill_job IS NULL THEN
            -- First run one schedule interval from now, not at once: migration 0011 (and
            -- anyone who refreshes by hand) would otherwise meet it refreshing the same
            -- buckets, which TimescaleDB refuses ("concurrent refresh").
            backfill_job := add_continuous_aggregate_policy(cagg,
                start_offset => (effective ->> 'cagg_backfill_start_offset')::interval,
                end_offset => refresh_start,
                schedule_interval => backfill_every,
                initial_start => now() + backfill_every
            );
            PERFORM alter_job(backfill_job, job_name => backfill_name);
        ELSE
            SELECT config INTO job_config FROM timescaledb_information.jobs
            WHERE job_id = backfill_job;
            IF job_config || backfill_config IS DISTINCT FROM job_config
                OR (SELECT schedule_interval FROM timescaledb_information.jobs
                    WHERE job_id = backfill_job) IS DISTINCT FROM backfill_every
            THEN
                PERFORM alter_job(backfill_job, config => job_config || backfill_config,
                    schedule_interval => backfill_every);
            END IF;
        END IF;
    END IF;
    RETURN effective;
END
$$;

COMMENT ON FUNCTION telemetry.apply_policies() IS
    'Check the f2pipe.* policy settings, remember those the session gives, and (with '
    'TimescaleDB) alter chunk intervals, compression, retention and refresh jobs to match; '
    'returns the settings in effect';

-- A database migrated before this file has policies in TimescaleDB's catalog that may differ
-- from the defaults (set with SET f2pipe.… and 0006's function): remember those, so the call
-- below does not reset them. Plain PostgreSQL kept nothing.
DO $$
DECLARE
    readings_chunk interval;
    events_chunk interval;
    compression jsonb;
    retention jsonb;
    events_retention jsonb;
    hourly_retention jsonb;
    refresh jsonb;
    remembered jsonb := '{}';
    setting_name text;
BEGIN
    IF NOT telemetry.timescaledb_enabled() THEN
        RETURN;
    END IF;
    SELECT d.time_interval INTO readings_chunk FROM timescaledb_information.dimensions AS d
    WHERE d.hypertable_schema = 'telemetry' AND d.hypertable_name = 'readings';
    SELECT d.time_interval INTO events_chunk FROM timescaledb_information.dimensions AS d
    WHERE d.hypertable_schema = 'telemetry' AND d.hypertable_name = 'events';
    SELECT j.config INTO compression FROM timescaledb_information.jobs AS j
    WHERE j.job_id = telemetry.policy_job('policy_compression', 'telemetry.readings');
    SELECT j.config INTO retention FROM timescaledb_information.jobs AS j
    WHERE j.job_id = telemetry.policy_job('policy_retention', 'telemetry.readings');
    SELECT j.config INTO events_retention FROM timescaledb_information.jobs AS j
    WHERE j.job_id = telemetry.policy_job('policy_retention', 'telemetry.events');
    SELECT j.config INTO hourly_retention FROM timescaledb_information.jobs AS j
    WHERE j.job_id = telemetry.policy_job('policy_retention', 'telemetry.readings_hourly');
    SELECT j.config || jsonb_build_object('schedule_interval', j.schedule_interval::text)
    INTO refresh FROM timescaledb_information.jobs AS j
    WHERE j.job_id = telemetry.policy_job(
        'policy_refresh_continuous_aggregate', 'telemetry.readings_hourly'
    );

    -- A missing job is a policy switched off; a value equal to the default is not remembered.
    remembered := jsonb_strip_nulls(jsonb_build_object(
        'chunk_interval', nullif(readings_chunk, INTERVAL '1 day')::text,
        'events_chunk_interval', nullif(events_chunk, INTERVAL '7 days')::text,
        'compress_after', CASE WHEN compression IS NULL THEN 'off'
            ELSE nullif((compression ->> 'compress_after')::interval, INTERVAL '7 days')::text END,
        'retention', CASE WHEN retention IS NULL THEN 'off'
            ELSE nullif((retention ->> 'drop_after')::interval, INTERVAL '365 days')::text END,
        -- events follow readings unless they differ
        'events_retention', CASE
            WHEN (events_retention ->> 'drop_after')::interval
                IS NOT DISTINCT FROM (retention ->> 'drop_after')::interval THEN NULL
            ELSE coalesce(events_retention ->> 'drop_after', 'off') END,
        'hourly_retention', CASE WHEN hourly_retention IS NULL THEN 'off'
            ELSE nullif((hourly_retention ->> 'drop_after')::interval,
                INTERVAL '730 days')::text END,
        'cagg_refresh_start_offset',
            nullif((refresh ->> 'start_offset')::interval, INTERVAL '3 days')::text,
        'cagg_refresh_end_offset',
            nullif((refresh ->> 'end_offset')::interval, INTERVAL '1 hour')::text,
        'cagg_refresh_schedule_interval',
            nullif((refresh ->> 'schedule_interval')::interval, INTERVAL '30 minutes')::text
    ));

    FOR setting_name IN SELECT jsonb_object_keys(remembered) LOOP
        INSERT INTO f2pipe_meta.policy_settings (name, value)
        VALUES (setting_name, remembered ->> setting_name)
        ON CONFLICT ON CONSTRAINT policy_settings_pkey DO NOTHING;
    END LOOP;
END
$$;

SELECT telemetry.apply_policies();
