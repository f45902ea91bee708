-- The operator console (served by the api, docs/console.md) shows a controller's latest values,
-- the last hour of each datapoint, its door/exit/motion states and each controller's message
-- rate: the api reads telemetry.readings and telemetry.events. Read only: the sink alone
-- writes telemetry (0009), and the api never changes a reading or an event.

GRANT SELECT ON telemetry.readings, telemetry.events TO f2pipe_api;
