-- Time series: one row per decoded value, one row per non-numeric event.
--
-- No foreign keys to the registry, on purpose:
--   * a foreign key checks every inserted row against the registry and takes a KEY SHARE lock
--     on the referenced row: a lookup per row on the hot path (the sink writes tens of
--     thousands of rows a second), and lock traffic against registry updates;
--   * deleting a device would either be refused by its history or have to cascade through
--     millions of rows in every chunk, compressed ones included (slow, and limited on
--     compressed chunks); history outlives the registry row, and retention drops it by chunk.
-- The label views join with LEFT JOINs for the same reason: rows of a deleted device still show.
--
-- Idempotency: the primary keys make a replayed batch land nothing twice
-- (INSERT ... ON CONFLICT DO NOTHING). TimescaleDB requires every unique index to include the
-- time column; both keys start with it.

CREATE TABLE telemetry.readings (
    "timestamp" timestamptz NOT NULL,
    -- The sensor device's id (registry.devices), not the controller's.
    device_id bigint NOT NULL,
    datapoint_id integer NOT NULL,
    value double precision NOT NULL,
    CONSTRAINT readings_pkey PRIMARY KEY ("timestamp", device_id, datapoint_id)
);

-- Dashboards ask for one device over a time range; the primary key leads with time.
CREATE INDEX readings_device_time ON telemetry.readings (device_id, "timestamp" DESC);

CREATE TABLE telemetry.events (
    "timestamp" timestamptz NOT NULL,
    device_id bigint NOT NULL,
    -- What happened: 'scan' (reader data), 'state' (door sensors, buttons...), and so on.
    kind text NOT NULL CHECK (kind ~ '^[a-z0-9]+([_-][a-z0-9]+)*$'),
    data jsonb NOT NULL DEFAULT '{}',
    CONSTRAINT events_pkey PRIMARY KEY ("timestamp", device_id, kind)
);

CREATE INDEX events_device_time ON telemetry.events (device_id, "timestamp" DESC);

-- With TimescaleDB: hypertables with compression. Policies (compression, retention, refresh)
-- are set by telemetry.apply_policies() in a later migration, once the aggregate exists.
DO $$
DECLARE
    readings_chunk interval := telemetry.interval_setting('chunk_interval', '1 day');
    events_chunk interval := telemetry.interval_setting('events_chunk_interval', '7 days');
BEGIN
    IF NOT telemetry.timescaledb_enabled() THEN
        RETURN;
    END IF;
    -- The create_hypertable(relation, time_column_name, ...) form: deprecated since 2.13 in
    -- favour of by_range(), but present in every 2.x release. The primary key already leads
    -- with the time column, so the default time index would only duplicate it.
    PERFORM create_hypertable(
        'telemetry.readings', 'timestamp'::name,
        chunk_time_interval => readings_chunk,
        create_default_indexes => false,
        if_not_exists => true,
        migrate_data => true
    );
    PERFORM create_hypertable(
        'telemetry.events', 'timestamp'::name,
        chunk_time_interval => events_chunk,
        create_default_indexes => false,
        if_not_exists => true,
        migrate_data => true
    );
    -- Segmenting by every non-time key column keeps each series (device, datapoint) in its
    -- own compressed batches, ordered by time: good ratios for slowly changing values, and an
    -- ON CONFLICT check against a compressed chunk touches one segment, not the whole chunk.
    ALTER TABLE telemetry.readings SET (
        timescaledb.compress,
        timescaledb.compress_segmentby = 'device_id, datapoint_id',
        timescaledb.compress_orderby = '"timestamp" DESC'
    );
    ALTER TABLE telemetry.events SET (
        timescaledb.compress,
        timescaledb.compress_segmentby = 'device_id, kind',
        timescaledb.compress_orderby = '"timestamp" DESC'
    );
END
$$;

COMMENT ON TABLE telemetry.readings IS
    'Decoded numeric values: (timestamp, sensor device, datapoint) -> value; the key makes writes idempotent';
COMMENT ON TABLE telemetry.events IS
    'Non-numeric messages (reader scans, state changes) as JSON; the key makes writes idempotent';
