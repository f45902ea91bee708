-- Cache invalidation for the processor: every committed change to a registry table that decoding
-- depends on sends NOTIFY registry_changed with a JSON payload
--
--   {"table": "pins", "op": "INSERT", "ids": [12, 13], "connector_ids": [4]}
--
-- ids are the primary keys of the rows the statement touched (old and new); the parent key
-- (connector_ids for pins, controller_ids for connectors, template_ids for datapoints,
-- device_type_ids for templates; macs, the controllers' MACs, for devices) helps a cache keyed
-- by the parent. ids is
-- null on TRUNCATE, and when the list would not fit in a NOTIFY payload (8000 bytes): then the
-- listener drops everything it cached from that table. PostgreSQL delivers notifications at
-- commit, once per distinct payload, so a rolled-back change notifies nobody.
--
-- Statement-level triggers with transition tables send one notification per statement, not
-- one per row: seeding 1,000 controllers sends a handful, not tens of thousands.

CREATE FUNCTION registry.notify_changed()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    parent_column text := TG_ARGV[0];
    ids jsonb;
    parent_ids jsonb;
    payload jsonb;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        payload := jsonb_build_object('table', TG_TABLE_NAME, 'op', TG_OP, 'ids', NULL);
        PERFORM pg_notify('registry_changed', payload::text);
        RETURN NULL;
    END IF;
    -- Transition tables are named changed_new / changed_old on every trigger of this function;
    -- an INSERT trigger only has the new one and a DELETE trigger only the old one.
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
    PERFORM pg_notify('registry_changed', payload::text);
    RETURN NULL;
END
$$;

-- One trigger per event: a trigger with transition tables may fire on one event only.
DO $$
DECLARE
    target record;
BEGIN
    FOR target IN
        SELECT * FROM (VALUES
            ('device_templates', 'device_type_id'),
            ('datapoints', 'template_id'),
            ('devices', 'mac'),
            ('connectors', 'controller_id'),
            ('pins', 'connector_id')
        ) AS t (table_name, parent_column)
    LOOP
        EXECUTE format(
            'CREATE TRIGGER %1$s_notify_insert AFTER INSERT ON registry.%1$I'
            ' REFERENCING NEW TABLE AS changed_new'
            ' FOR EACH STATEMENT EXECUTE FUNCTION registry.notify_changed(%2$L)',
            target.table_name, target.parent_column
        );
        EXECUTE format(
            'CREATE TRIGGER %1$s_notify_update AFTER UPDATE ON registry.%1$I'
            ' REFERENCING NEW TABLE AS changed_new OLD TABLE AS changed_old'
            ' FOR EACH STATEMENT EXECUTE FUNCTION registry.notify_changed(%2$L)',
            target.table_name, target.parent_column
        );
        EXECUTE format(
            'CREATE TRIGGER %1$s_notify_delete AFTER DELETE ON registry.%1$I'
            ' REFERENCING OLD TABLE AS changed_old'
            ' FOR EACH STATEMENT EXECUTE FUNCTION registry.notify_changed(%2$L)',
            target.table_name, target.parent_column
        );
        EXECUTE format(
            'CREATE TRIGGER %1$s_notify_truncate AFTER TRUNCATE ON registry.%1$I'
            ' FOR EACH STATEMENT EXECUTE FUNCTION registry.notify_changed(%2$L)',
            target.table_name, target.parent_column
        );
    END LOOP;
END
$$;
