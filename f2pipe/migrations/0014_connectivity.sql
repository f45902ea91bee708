-- Controller connectivity: the current state of each controller, as the processor decided it
-- (docs/processor.md#connectivity). Every transition is also a row of telemetry.events (kind
-- 'connectivity'); this table keeps only the newest, for the api's controller list.
--
-- The sink upserts it from the processed stream: a transition sets status and changed_at
-- only if it is newer than the stored one (a replay never goes backwards), and last_seen only
-- ever moves forward. The processor reports last_seen at most every few seconds per
-- controller, so it is fresh to within ~10 s plus the sink's flush, not per message.
--
-- No foreign key to registry.devices, as for telemetry (0004): a deleted controller's row
-- is harmless, and the api joins from the registry side. A plain table (not a hypertable):
-- one row per controller, on PostgreSQL with or without TimescaleDB.

CREATE TABLE telemetry.controller_status (
    -- The controller's registry.devices id.
    device_id bigint PRIMARY KEY,
    status text NOT NULL CHECK (status IN ('online', 'offline')),
    -- When the controller went to this status: the first message's received time (online),
    -- or last_seen + the processor's timeout (offline). NULL until a transition arrived.
    changed_at timestamptz,
    -- When the bridge last received a message of the controller.
    last_seen timestamptz
);

COMMENT ON TABLE telemetry.controller_status IS
    'Each controller''s newest connectivity state (online/offline) and when it was last heard; '
    'transitions are in telemetry.events, kind connectivity';

-- sink: writes it (INSERT ... ON CONFLICT DO UPDATE needs SELECT on what it reads).
GRANT SELECT, INSERT, UPDATE ON telemetry.controller_status TO f2pipe_sink;
-- api: reads it for GET /v1/controllers; nothing else in telemetry.
GRANT USAGE ON SCHEMA telemetry TO f2pipe_api;
GRANT SELECT ON telemetry.controller_status TO f2pipe_api;
