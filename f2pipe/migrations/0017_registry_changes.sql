-- What NOTIFY registry_changed said, kept for a while: a processor whose listener lost its
-- connection (a PostgreSQL restart, a network cut) reads what it missed from here on
-- reconnect and forgets only that, instead of emptying its caches (docs/processor.md).
--
-- One row per notification, written by the same trigger function in the same transaction,
-- so a rolled-back change leaves no row either. xid is the writing transaction's id: the
-- processor remembers a snapshot (pg_current_snapshot()) up to which it has applied every
-- notification, and asks for the rows of transactions not visible in it. Row ids are not
-- enough: two transactions commit in any order, whatever ids they drew.
--
-- Rows older than 7 days are deleted by the trigger as new ones arrive; a listener away for
-- longer (the processor checks) empties its caches as before. Never TRUNCATE this table while
-- a processor runs: it could then miss a change for as long as its cache keeps the entry.

CREATE TABLE registry.changes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    changed_at timestamptz NOT NULL DEFAULT now(),
    -- The notification's payload, as sent (0003_registry_notify.sql).
    payload jsonb NOT NULL
);

CREATE INDEX changes_xid ON registry.changes (xid);
CREATE INDEX changes_changed_at ON registry.changes (changed_at);

COMMENT ON TABLE registry.changes IS
    'registry_changed notifications of the last 7 days, for a processor that reconnects';

-- The body of 0003's function, plus the row. SECURITY DEFINER: the row is written with the
-- owner's rights, so the roles that edit the registry (api) need no grant on this table and
-- cannot forge or delete its rows; the search path is fixed, as a definer function needs.
CREATE OR REPLACE FUNCTION registry.notify_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parent_column text := TG_ARGV[0];
    ids jsonb;
    parent_ids jsonb;
    payload jsonb;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        payload := jsonb_build_object('table', TG_TABLE_NAME, 'op', TG_OP, 'ids', NULL);
    ELSE
        IF TG_OP = 'INSERT' THEN
            EXECUTE format(
                'SELECT jsonb_agg(DISTINCT id ORDER BY id), jsonb_agg(DISTINCT %1$I ORDER BY %1$I)'
                ' FILTER (WHERE %1$I IS NOT NULL)'
                ' FROM changed_new', parent_column
            ) INTO ids, parent_ids;
        ELSIF TG_OP = 'DELETE' THEN
            EXECUTE format(
                'SELECT jsonb_agg(DISTINCT id ORDER BY id), jsonb_agg(DISTINCT %1$I ORDER BY %1$I)'
                ' FILTER (WHERE %1$I IS NOT NULL)'
                ' FROM changed_old', parent_column
            ) INTO ids, parent_ids;
        ELSE
            EXECUTE format(
                'SELECT jsonb_agg(DISTINCT id ORDER BY id), jsonb_agg(DISTINCT %1$I ORDER BY %1$I)'
                ' FILTER (WHERE %1$I IS NOT NULL)'
                ' FROM (SELECT id, %1$I FROM changed_new UNION ALL SELECT id, %1$I FROM changed_old) s',
                parent_column
            ) INTO ids, parent_ids;
        END IF;
        IF ids IS NULL THEN
            RETURN NULL;  -- the statement touched no row
        END IF;
        payload := jsonb_build_object('table', TG_TABLE_NAME, 'op', TG_OP, 'ids', ids)
            || jsonb_build_object(parent_column || 's', parent_ids);
        IF octet_length(payload::text) > 7900 THEN
            payload := jsonb_build_object(
                'table', TG_TABLE_NAME, 'op', TG_OP, 'ids', NULL, 'count', jsonb_array_length(ids)
            );
        END IF;
    END IF;
    DELETE FROM registry.changes WHERE changed_at < now() - interval '7 days';
    INSERT INTO registry.changes (payload) VALUES (payload);
    PERFORM pg_notify('registry_changed', payload::text);
    RETURN NULL;
END
$$;

-- The processor reads what it missed; nobody else needs the table.
GRANT SELECT ON registry.changes TO f2pipe_processor;
