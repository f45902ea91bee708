-- The control-plane API's group role, f2pipe_api, as migration 0009 made the others: NOLOGIN,
-- created when missing, never a superuser; `f2pipe db-roles` makes the login (POSTGRES_API_*).
--
--   role         used by   may
--   f2pipe_api   api       read and change the registry an operator manages (device types,
--                          templates and datapoints, controllers and their claim code hashes,
--                          connectors, pins); read certificates (certgen alone issues and
--                          revokes them); read and use its tokens (last use, revocation) and
--                          create them; append to and read the audit log, never change or
--                          delete a row of it; temporary tables (bulk import stages its rows);
--                          nothing in telemetry.

DO $$
DECLARE
    existing pg_roles;
    may_create boolean;
BEGIN
    SELECT * INTO existing FROM pg_roles WHERE rolname = 'f2pipe_api';
    IF FOUND THEN
        IF existing.rolsuper OR existing.rolbypassrls THEN
            RAISE EXCEPTION 'role f2pipe_api exists and is a superuser (or bypasses row '
                'security): f2pipe will not use it as a service role';
        END IF;
    ELSE
        SELECT rolsuper OR rolcreaterole INTO may_create
        FROM pg_roles WHERE rolname = current_user;
        IF NOT may_create THEN
            RAISE EXCEPTION 'role f2pipe_api is missing, and % may not create roles', current_user
                USING HINT = 'Have an administrator run CREATE ROLE f2pipe_api NOLOGIN, '
                    'then run f2pipe migrate again.';
        END IF;
        BEGIN
            CREATE ROLE f2pipe_api NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created a moment ago by a migration of another database of this server
        END;
    END IF;
    EXECUTE format(
        'GRANT CONNECT, TEMPORARY ON DATABASE %I TO f2pipe_api', current_database()
    );
END
$$;

GRANT USAGE ON SCHEMA registry TO f2pipe_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON
    registry.device_types,
    registry.device_templates,
    registry.datapoints,
    registry.devices,
    registry.connectors,
    registry.pins
TO f2pipe_api;
GRANT SELECT ON registry.device_locations, registry.certificates TO f2pipe_api;
GRANT SELECT, INSERT ON registry.api_tokens TO f2pipe_api;
GRANT UPDATE (last_used_at, revoked_at) ON registry.api_tokens TO f2pipe_api;
GRANT SELECT, INSERT ON registry.audit_log TO f2pipe_api;
-- Bulk import draws the ids of new pin devices up front (nextval), as seed-demo does.
GRANT USAGE ON SEQUENCE registry.devices_id_seq TO f2pipe_api;
