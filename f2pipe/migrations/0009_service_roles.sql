-- One group role per service, holding exactly what that service's SQL needs.
--
-- The roles are NOLOGIN: nobody logs in as f2pipe_sink. `f2pipe db-roles` creates the LOGIN
-- roles the services connect with (one per service, each with its own password, stored as a
-- SCRAM-SHA-256 verifier) and makes each a member of its group, so a member gets these
-- privileges and nothing else. The owner of the schema (the role `f2pipe migrate` and
-- `f2pipe seed-demo` run as) keeps everything.
--
--   role               used by                 may
--   f2pipe_sink        sink                    INSERT into telemetry.readings and .events
--                                              (COPY, and INSERT ... ON CONFLICT DO NOTHING
--                                              from its own temporary tables, which needs
--                                              SELECT on the key columns); nothing in the
--                                              registry
--   f2pipe_processor   processor               SELECT the decoding spec and device locations
--                                              (devices without claim_code_hash); LISTEN,
--                                              which needs no grant
--   f2pipe_certgen     certgen                 SELECT a controller's id, MAC and claim code
--                                              hash; SELECT, INSERT and revoke (UPDATE of the
--                                              status columns) certificates; nothing else in
--                                              the registry, nothing in telemetry
--   f2pipe_simulator   simulator               SELECT the fleet as the processor sees it
--
-- Roles belong to the whole server, not to one database: they are created when missing (which
-- needs a superuser or CREATEROLE), and granted in every database this file runs in. A later
-- migration that adds a table a service uses grants it to that service's role in the same file.
-- Grafana's read-only role is made by deploy/timescaledb/grafana-reader.sql, not here.

DO $$
DECLARE
    wanted text[] := ARRAY['f2pipe_sink', 'f2pipe_processor', 'f2pipe_certgen', 'f2pipe_simulator'];
    name text;
    existing pg_roles;
    may_create boolean;
BEGIN
    SELECT rolsuper OR rolcreaterole INTO may_create FROM pg_roles WHERE rolname = current_user;
    FOREACH name IN ARRAY wanted LOOP
        SELECT * INTO existing FROM pg_roles WHERE rolname = name;
        IF FOUND THEN
            -- Made by an earlier run (maybe in another database), or by an administrator.
            IF existing.rolsuper OR existing.rolbypassrls THEN
                RAISE EXCEPTION 'role % exists and is a superuser (or bypasses row security): '
                    'f2pipe will not use it as a service role', name;
            END IF;
            CONTINUE;
        END IF;
        IF NOT may_create THEN
            RAISE EXCEPTION 'role % is missing, and % may not create roles', name, current_user
                USING HINT = format(
                    'Have an administrator run CREATE ROLE %I NOLOGIN (for each of %s), '
                    'then run f2pipe migrate again.', name, array_to_string(wanted, ', ')
                );
        END IF;
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', name);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created a moment ago by a migration of another database of this server
        END;
    END LOOP;

    -- Database-level: log in here; the sink also makes its staging tables (temporary).
    EXECUTE format(
        'GRANT CONNECT ON DATABASE %I TO f2pipe_sink, f2pipe_processor, f2pipe_certgen, '
        'f2pipe_simulator', current_database()
    );
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO f2pipe_sink', current_database());
END
$$;

-- sink: telemetry rows in, nothing else. ON CONFLICT (key columns) DO NOTHING, the merge
-- path after a replay, needs SELECT on the conflict target's columns: the key columns only,
-- never a value or an event's data.
GRANT USAGE ON SCHEMA telemetry TO f2pipe_sink;
GRANT INSERT ON telemetry.readings, telemetry.events TO f2pipe_sink;
-- TimescaleDB copies a hypertable's grants to its internal compressed hypertable, whose
-- columns differ ("column "timestamp" of relation "_compressed_hypertable_3" does not exist"):
-- there the sink reads the whole tables; it still writes nothing but INSERTs.
DO $$
BEGIN
    IF telemetry.timescaledb_enabled() THEN
        GRANT SELECT ON telemetry.readings, telemetry.events TO f2pipe_sink;
    ELSE
        GRANT SELECT ("timestamp", device_id, datapoint_id) ON telemetry.readings TO f2pipe_sink;
        GRANT SELECT ("timestamp", device_id, kind) ON telemetry.events TO f2pipe_sink;
    END IF;
END
$$;

-- processor and simulator: the decoding spec and where each device sits. devices without
-- claim_code_hash (column privileges): neither ever needs a controller's secret.
GRANT USAGE ON SCHEMA registry TO f2pipe_processor, f2pipe_simulator;
GRANT SELECT ON
    registry.device_types,
    registry.device_templates,
    registry.datapoints,
    registry.connectors,
    registry.pins,
    registry.device_locations
TO f2pipe_processor, f2pipe_simulator;
GRANT SELECT (id, device_type_id, template_id, name, mac, created_at, updated_at)
    ON registry.devices TO f2pipe_processor, f2pipe_simulator;

-- certgen: a controller's claim code hash to check, and the certificates it issues and
-- revokes (SELECT … FOR UPDATE needs the UPDATE privilege it has on the status columns).
-- Foreign keys to devices are checked by the server as the tables' owner: certgen needs no
-- more of devices than it reads. Its enrolment throttle lives in its memory, so it has
-- nothing on claim_failures or enrolment_lockouts (migration 0008), which it only checks
-- for (to_regclass, which needs USAGE on the schema alone).
GRANT USAGE ON SCHEMA registry TO f2pipe_certgen;
GRANT SELECT (id, mac, claim_code_hash) ON registry.devices TO f2pipe_certgen;
GRANT SELECT, INSERT ON registry.certificates TO f2pipe_certgen;
GRANT UPDATE (status, revoked_at, revocation_reason) ON registry.certificates TO f2pipe_certgen;
