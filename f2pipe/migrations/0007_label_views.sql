-- Views that put names on the numbers, for Grafana and for people writing SQL.
--
-- LEFT JOINs throughout: telemetry has no foreign keys to the registry, and rows of a device
-- that was since deleted or unplugged still show, with NULL labels. A filter on a label column
-- (WHERE controller_mac = ...) turns the join into an inner one, so the planner can start from
-- the registry and reach readings through readings_device_time.

CREATE VIEW telemetry.readings_labeled AS
SELECT
    r."timestamp",
    r.device_id,
    loc.device_name,
    loc.device_type,
    loc.controller_id,
    loc.controller_name,
    loc.controller_mac,
    loc.connector,
    loc.mode,
    loc.component,
    loc.position,
    r.datapoint_id,
    dp.key AS datapoint_key,
    dp.label AS datapoint_label,
    dp.unit,
    r.value
FROM telemetry.readings AS r
LEFT JOIN registry.device_locations AS loc ON loc.device_id = r.device_id
LEFT JOIN registry.datapoints AS dp ON dp.id = r.datapoint_id;

CREATE VIEW telemetry.events_labeled AS
SELECT
    e."timestamp",
    e.device_id,
    loc.device_name,
    loc.device_type,
    loc.controller_id,
    loc.controller_name,
    loc.controller_mac,
    loc.connector,
    loc.mode,
    loc.component,
    loc.position,
    e.kind,
    e.data
FROM telemetry.events AS e
LEFT JOIN registry.device_locations AS loc ON loc.device_id = e.device_id;

CREATE VIEW telemetry.readings_hourly_labeled AS
SELECT
    h.bucket,
    h.device_id,
    loc.device_name,
    loc.device_type,
    loc.controller_id,
    loc.controller_name,
    loc.controller_mac,
    loc.connector,
    loc.mode,
    loc.component,
    loc.position,
    h.datapoint_id,
    dp.key AS datapoint_key,
    dp.label AS datapoint_label,
    dp.unit,
    h.avg,
    h.min,
    h.max,
    h.count
FROM telemetry.readings_hourly AS h
LEFT JOIN registry.device_locations AS loc ON loc.device_id = h.device_id
LEFT JOIN registry.datapoints AS dp ON dp.id = h.datapoint_id;

COMMENT ON VIEW telemetry.readings_labeled IS
    'readings with device, controller (MAC), connector, component and datapoint labels';
COMMENT ON VIEW telemetry.events_labeled IS
    'events with device, controller (MAC), connector and component labels';
COMMENT ON VIEW telemetry.readings_hourly_labeled IS
    'readings_hourly with device, controller (MAC), connector, component and datapoint labels';
