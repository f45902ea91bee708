-- Hourly aggregate of readings: (bucket, device_id, datapoint_id, avg, min, max, count).
--
-- TimescaleDB: a continuous aggregate. It is created WITH NO DATA because the default
-- (WITH DATA) refreshes at once, which TimescaleDB refuses inside a transaction block or a
-- function ("cannot run inside a transaction block" / "cannot be executed from a function");
-- WITH NO DATA is allowed in both. The refresh policy (telemetry.apply_policies) fills it.
-- materialized_only = false makes it "real time": buckets the policy has not materialised yet
-- are computed from the raw rows at query time, so it answers like the plain view does.
--
-- Plain PostgreSQL: an ordinary view over readings with the same columns and types.

DO $$
BEGIN
    IF telemetry.timescaledb_enabled() THEN
        EXECUTE $sql$
            CREATE MATERIALIZED VIEW telemetry.readings_hourly
            WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
            SELECT
                time_bucket(INTERVAL '1 hour', "timestamp") AS bucket,
                device_id,
                datapoint_id,
                avg(value) AS avg,
                min(value) AS min,
                max(value) AS max,
                count(*) AS count
            FROM telemetry.readings
            GROUP BY bucket, device_id, datapoint_id
            WITH NO DATA
        $sql$;
    ELSE
        EXECUTE $sql$
            CREATE VIEW telemetry.readings_hourly AS
            SELECT
                time_bucket(INTERVAL '1 hour', "timestamp") AS bucket,
                device_id,
                datapoint_id,
                avg(value) AS avg,
                min(value) AS min,
                max(value) AS max,
                count(*) AS count
            FROM telemetry.readings
            GROUP BY bucket, device_id, datapoint_id
        $sql$;
    END IF;
END
$$;
