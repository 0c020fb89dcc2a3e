------------------------------------------------------------------------------------------
-- 4. Tracking new tables: an event trigger tracks tables and partitions created later.
--    Holds: bemi.auto_tracked, bemi.partitions_moved(), bemi.track_new_tables() and its event trigger
--    bemi_track_new_tables, bemi.track_all(name, boolean).
------------------------------------------------------------------------------------------

-- Schemas whose tables created later are tracked in their creating transaction
-- (bemi.track_all(schema, auto => true)); the event trigger below reads it.
CREATE TABLE bemi.auto_tracked (
  schema name PRIMARY KEY,
  since timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE bemi.auto_tracked IS
  'Schemas whose new tables are tracked when they are created (bemi.track_all(schema, auto => true)).';

SELECT pg_catalog.pg_extension_config_dump('bemi.auto_tracked', '');

-- After an ALTER TABLE of a tracked root: a partition detached takes its rows out of the root
-- without a change of their own, and one attached brings its rows in; each (when it has rows)
-- is written to the WAL as a partition event (bemi.partition_event), which the trail stores as
-- a TRUNCATE of the root naming the partition. A detached partition is no longer tracked
-- (bemi.untrack: it leaves bemi.tracked and status); an attached one is tracked by the caller.
-- Inheritance children (published by themselves) are left as they are.
CREATE FUNCTION bemi.partitions_moved(top regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  member regclass;
  has_rows boolean;
BEGIN
  FOR member IN
    SELECT t.relation FROM bemi.tracking AS t JOIN pg_catalog.pg_class AS c ON c.oid = t.relation
    WHERE t.root = top AND t.relation <> top AND NOT c.relispartition
      AND t.relation NOT IN (SELECT bemi.members(top))
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_publication_rel AS r JOIN pg_catalog.pg_publication AS p ON p.oid = r.prpubid
                      WHERE p.pubname = 'bemi' AND r.prrelid = t.relation)
  LOOP
    EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM %s)', member) INTO has_rows;
    IF has_rows THEN
      PERFORM bemi.partition_event(member, 'detach', top);
    END IF;
    PERFORM bemi.untrack(member);
  END LOOP;
  FOR member IN
    SELECT m.member FROM bemi.members(top) AS m(member) JOIN pg_catalog.pg_class AS c ON c.oid = m.member
    WHERE c.relispartition AND NOT EXISTS (SELECT FROM bemi.tracking AS t WHERE t.relation = m.member)
      AND EXISTS (SELECT FROM pg_catalog.pg_inherits AS i JOIN bemi.tracking AS t ON t.relation = i.inhparent
                  WHERE i.inhrelid = m.member) -- the partition attached, not those under it
  LOOP
    EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM %s)', member) INTO has_rows;
    IF has_rows THEN
      PERFORM bemi.partition_event(member, 'attach');
    END IF;
  END LOOP;
END
$$;

-- At the end of CREATE TABLE (AS), SELECT INTO and ALTER TABLE: tracks a new table of an
-- auto-tracked schema, and a tracked table again when it gained a partition or child (CREATE
-- TABLE ... PARTITION OF, ATTACH PARTITION, INHERIT). SECURITY DEFINER: whoever runs the DDL
-- need not be allowed to track. Unlogged tables are skipped: their changes never reach the WAL;
-- and tables with virtual generated columns, which bemi.track refuses.
CREATE FUNCTION bemi.track_new_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  created record;
  top regclass;
BEGIN
  -- The ALTER TABLE commands bemi.track runs itself.
  IF pg_catalog.current_setting('bemi.tracking_new', true) = 'on' THEN
    RETURN;
  END IF;
  FOR created IN
    SELECT DISTINCT d.objid, d.command_tag, c.relpersistence, n.nspname
    FROM pg_catalog.pg_event_trigger_ddl_commands() d
    JOIN pg_catalog.pg_class c ON c.oid = d.objid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE d.object_type = 'table' AND NOT d.in_extension AND c.relkind IN ('r', 'p')
      AND c.relpersistence <> 't' AND n.nspname NOT IN ('bemi', 'bemi_trail')
  LOOP
    -- The table it is a partition or child of, at the top.
    WITH RECURSIVE up(relation, depth) AS (
      SELECT created.objid, 0
      UNION ALL
      SELECT i.inhparent, u.depth + 1 FROM up u JOIN pg_catalog.pg_inherits i ON i.inhrelid = u.relation
    )
    SELECT u.relation::pg_catalog.regclass INTO top FROM up u ORDER BY u.depth DESC LIMIT 1;
    IF created.command_tag = 'ALTER TABLE' AND EXISTS (SELECT FROM bemi.tracking t WHERE t.relation = top AND t.root = top) THEN
      PERFORM bemi.partitions_moved(top);
    END IF;
    IF EXISTS (SELECT FROM bemi.tracking t WHERE t.relation = top AND t.root = top) THEN
      IF NOT EXISTS (SELECT FROM bemi.members(top) AS m(member)
                     WHERE NOT EXISTS (SELECT FROM bemi.tracking t WHERE t.relation = m.member)) THEN
        CONTINUE; -- every member is tracked already
      END IF;
    ELSIF top <> created.objid::pg_catalog.regclass
       OR created.command_tag NOT IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
       OR NOT EXISTS (SELECT FROM bemi.auto_tracked a WHERE a.schema = created.nspname) THEN
      CONTINUE;
    ELSIF created.relpersistence = 'u' THEN
      RAISE WARNING 'bemi: not tracking %, which is unlogged: its changes never reach the WAL', top;
      CONTINUE;
    END IF;
    -- bemi.track would refuse it (bemi.virtual_columns): the user's DDL goes ahead untracked.
    IF EXISTS (SELECT FROM bemi.members(top) AS m(member) WHERE bemi.virtual_columns(m.member) IS NOT NULL) THEN
      RAISE WARNING 'bemi: not tracking the new tables of %: virtual generated columns cannot be published', top
        USING HINT = 'Make them STORED (GENERATED ALWAYS AS (...) STORED) to track the table.';
      CONTINUE;
    END IF;
    PERFORM pg_catalog.set_config('bemi.tracking_new', 'on', true);
    PERFORM bemi.track(top);
    PERFORM pg_catalog.set_config('bemi.tracking_new', '', true);
  END LOOP;
END
$$;

COMMENT ON FUNCTION bemi.track_new_tables() IS
  'Event trigger: tracks new tables of auto-tracked schemas and new partitions or children of tracked tables.';

-- Only a superuser (or a role a managed platform allows) may create an event trigger; without
-- it, bemi.track_all(schema, auto => true) says so.
DO $$
BEGIN
  CREATE EVENT TRIGGER bemi_track_new_tables ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE')
    EXECUTE FUNCTION bemi.track_new_tables();
EXCEPTION WHEN insufficient_privilege THEN
  RAISE NOTICE 'bemi: new tables cannot be tracked automatically: role % may not create event triggers', current_user
    USING HINT = 'Call bemi.track() after each CREATE TABLE, or install bemi as a superuser.';
END
$$;

-- Tracks every table of a schema. auto: true tracks tables created there later too, false
-- stops that, NULL (the default) leaves it as it is.
CREATE FUNCTION bemi.track_all(schema_name name DEFAULT 'public', auto boolean DEFAULT NULL) RETURNS SETOF regclass
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  relation regclass;
  unlogged regclass;
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_namespace n WHERE n.nspname = schema_name) THEN
    RAISE EXCEPTION 'bemi: schema "%" does not exist', schema_name USING ERRCODE = 'invalid_schema_name';
  END IF;
  IF schema_name IN ('bemi', 'bemi_trail', 'pg_catalog', 'information_schema') THEN
    RAISE EXCEPTION 'bemi: the tables of schema "%" cannot be tracked', schema_name
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Track the schemas that hold your application''s tables.';
  END IF;
  IF auto AND NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger e
                          WHERE e.evtname = 'bemi_track_new_tables' AND e.evtenabled <> 'D') THEN
    RAISE EXCEPTION 'bemi: tables created later in schema "%" cannot be tracked automatically: the event trigger bemi_track_new_tables is missing', schema_name
      USING ERRCODE = 'insufficient_privilege',
            HINT = 'Only a superuser may create event triggers, and bemi was installed by a role that may not. Call bemi.track() after each CREATE TABLE instead, or reinstall bemi as a superuser.';
  END IF;
  IF auto THEN
    INSERT INTO bemi.auto_tracked (schema) VALUES (schema_name) ON CONFLICT (schema) DO NOTHING;
  ELSIF NOT auto THEN
    DELETE FROM bemi.auto_tracked a WHERE a.schema = schema_name;
  END IF;
  FOR relation IN
    SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = schema_name AND c.relkind IN ('r', 'p') AND NOT c.relispartition
    ORDER BY c.relname
  LOOP
    -- An unlogged table (or partition) never reaches the WAL: it is left out, and said so.
    SELECT m INTO unlogged FROM bemi.members(relation) m JOIN pg_catalog.pg_class c ON c.oid = m
    WHERE c.relpersistence = 'u' LIMIT 1;
    IF FOUND THEN
      RAISE NOTICE 'bemi: % is not tracked: % is unlogged, so its changes never reach the WAL', relation, unlogged
        USING HINT = pg_catalog.format('Make it logged, then track it: ALTER TABLE %s SET LOGGED; SELECT bemi.track(%L);',
                                       unlogged, relation::text);
      CONTINUE;
    END IF;
    PERFORM bemi.track(relation);
    RETURN NEXT relation;
  END LOOP;
END
$$;

COMMENT ON FUNCTION bemi.track_all(name, boolean) IS
  'Tracks every ordinary and partitioned table of a schema (an unlogged one is left out, with a NOTICE); auto => true also tracks tables created there later (false stops that).';

REVOKE ALL ON FUNCTION bemi.track_all(name, boolean), bemi.track_new_tables(), bemi.partitions_moved(regclass) FROM PUBLIC;
REVOKE ALL ON bemi.auto_tracked FROM PUBLIC;
