------------------------------------------------------------------------------------------
-- 3. Tracking: a tracked table carries the context trigger, logs whole rows (REPLICA
--    IDENTITY FULL) and is a member of the publication the slot decodes.
--    Holds: bemi.tracked, bemi.tracking, bemi.keys and the functions that keep them
--    (primary_key, key_columns, remember_key, key_columns_at, the event trigger
--    bemi_remember_keys), bemi.members, bemi.replica_identity, bemi.create_publication,
--    bemi.track, bemi.untrack.
------------------------------------------------------------------------------------------

CREATE VIEW bemi.tracked AS
SELECT c.oid::pg_catalog.regclass AS relation, n.nspname::text AS schema, c.relname::text AS "table"
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE t.tgname = 'bemi_context' AND t.tgfoid = 'bemi.context_trigger()'::pg_catalog.regprocedure
  AND NOT c.relispartition;

COMMENT ON VIEW bemi.tracked IS 'The tracked tables (partitions are covered by their tracked parent).';

-- The primary key columns of a table, in key order, as wal2json "pk": [{name, type}].
CREATE FUNCTION bemi.primary_key(relation regclass) RETURNS jsonb
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT pg_catalog.jsonb_agg(
    pg_catalog.jsonb_build_object('name', a.attname, 'type', pg_catalog.format_type(a.atttypid, NULL))
    ORDER BY k.ord)
  FROM pg_catalog.pg_index i
  CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::smallint[]) WITH ORDINALITY AS k(attnum, ord)
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
  WHERE i.indrelid = relation AND i.indisprimary;
END;


-- What each tracked table (and each partition or inheritance child under it) was like before
-- track: its replica identity, given back by untrack; and when tracking began, for time travel.
CREATE TABLE bemi.tracking (
  relation oid PRIMARY KEY,
  root oid NOT NULL,
  schema text NOT NULL,
  "table" text NOT NULL,
  tracked_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  replica_identity text NOT NULL,
  ignore_columns text[] NOT NULL DEFAULT '{}',
  mask_columns text[] NOT NULL DEFAULT '{}'
);

COMMENT ON TABLE bemi.tracking IS
  'Tracked tables and their members: when tracking began, the replica identity (as an ALTER TABLE clause) untrack restores, and the column rules.';
COMMENT ON COLUMN bemi.tracking.ignore_columns IS 'An UPDATE that changes only these columns is not stored.';
COMMENT ON COLUMN bemi.tracking.mask_columns IS 'These columns never reach the trail: their values are stored as "[masked]".';

-- The primary key columns of a table, in key order (1.0's bemi.primary_key, names only).
CREATE FUNCTION bemi.key_columns(relation oid) RETURNS text[]
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT pg_catalog.array_agg(k.col ->> 'name' ORDER BY k.ord)
  FROM pg_catalog.jsonb_array_elements(bemi.primary_key(relation::pg_catalog.regclass)) WITH ORDINALITY AS k(col, ord);
END;

SELECT pg_catalog.pg_extension_config_dump('bemi.tracking', '');

-- The primary key of each tracked table over time, so that a change's primary_key follows the
-- key its table had when the change was made: written by track and, where bemi may have an
-- event trigger, after every ALTER TABLE of a tracked table.
CREATE TABLE bemi.keys (
  relation oid NOT NULL,
  since pg_lsn NOT NULL,
  columns text[],
  PRIMARY KEY (relation, since)
);

COMMENT ON TABLE bemi.keys IS 'The primary key columns of tracked tables, from a WAL position on (NULL: no primary key).';
SELECT pg_catalog.pg_extension_config_dump('bemi.keys', '');

-- Records a table's primary key from now on, when it differs from the one recorded last.
CREATE FUNCTION bemi.remember_key(relation oid) RETURNS void
LANGUAGE sql
BEGIN ATOMIC
  INSERT INTO bemi.keys (relation, since, columns)
  SELECT relation, pg_catalog.pg_current_wal_insert_lsn(), bemi.key_columns(relation)
  WHERE NOT EXISTS (
    SELECT FROM (SELECT k.columns FROM bemi.keys k WHERE k.relation = remember_key.relation ORDER BY k.since DESC LIMIT 1) AS l
    WHERE l.columns IS NOT DISTINCT FROM bemi.key_columns(remember_key.relation))
  ON CONFLICT (relation, since) DO UPDATE SET columns = excluded.columns;
END;

-- The primary key a table had at a WAL position: as recorded, else as the catalog has it now.
CREATE FUNCTION bemi.key_columns_at(relation oid, at pg_lsn) RETURNS text[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  recorded record;
BEGIN
  SELECT k.columns INTO recorded FROM bemi.keys k
  WHERE k.relation = key_columns_at.relation AND k.since <= at ORDER BY k.since DESC LIMIT 1;
  IF FOUND THEN
    RETURN recorded.columns;
  END IF;
  RETURN bemi.key_columns(relation);
END
$$;

-- After ALTER TABLE of a tracked table, its key as it is now (whoever altered it).
CREATE FUNCTION bemi.remember_keys() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM bemi.remember_key(c.objid) FROM pg_catalog.pg_event_trigger_ddl_commands() AS c
  WHERE c.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
    AND c.objid IN (SELECT t.relation FROM bemi.tracking t);
END
$$;

-- Event triggers need a superuser: elsewhere the key at ingest stands for a key changed since.
DO $$
BEGIN
  IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
    CREATE EVENT TRIGGER bemi_remember_keys ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
      EXECUTE FUNCTION bemi.remember_keys();
  END IF;
END
$$;

-- A table and every table under it: partitions, and inheritance children, at any depth.
CREATE FUNCTION bemi.members(relation regclass) RETURNS SETOF regclass
LANGUAGE sql STABLE
BEGIN ATOMIC
  WITH RECURSIVE tree(member) AS (
    SELECT relation::pg_catalog.oid
    UNION
    SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree t ON i.inhparent = t.member
  )
  SELECT tree.member::pg_catalog.regclass FROM tree;
END;

-- A table's replica identity as the ALTER TABLE clause that sets it.
CREATE FUNCTION bemi.replica_identity(relation regclass) RETURNS text
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT CASE c.relreplident
    WHEN 'f' THEN 'FULL' WHEN 'n' THEN 'NOTHING'
    WHEN 'i' THEN (SELECT pg_catalog.format('USING INDEX %I', x.relname)
                   FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class x ON x.oid = i.indexrelid
                   WHERE i.indrelid = c.oid AND i.indisreplident)
    ELSE 'DEFAULT' END
  FROM pg_catalog.pg_class c WHERE c.oid = relation;
END;

-- The publication is the set of tables the slot decodes; partitions report as their root.
-- Publications never belong to an extension: pg_dump keeps it, with its tables, like any
-- publication. So the install makes it (below) except in a restore, where the dump brings its
-- own (docs/backup.md); bemi.track and bemi.create_slot make it when it is missing (after a
-- restore of schema bemi alone). One left by an earlier install is used as it is.
CREATE FUNCTION bemi.create_publication() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_publication p WHERE p.pubname = 'bemi') THEN
    CREATE PUBLICATION bemi WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true);
  END IF;
END
$$;

-- Column rules: ignore_columns (an UPDATE that changes only these is not stored) and
-- mask_columns (never stored: "[masked]" instead); NULL keeps the rules a table has.
CREATE FUNCTION bemi.track(relation regclass, ignore_columns text[] DEFAULT NULL, mask_columns text[] DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  member regclass;
  kind "char";
  persistence "char";
  is_partition boolean;
  unknown text;
  previous_setting text;
BEGIN
  SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c), ', ') INTO unknown
  FROM pg_catalog.unnest(coalesce(ignore_columns, '{}') || coalesce(mask_columns, '{}')) AS c
  WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = relation AND a.attname = c
                    AND a.attnum > 0 AND NOT a.attisdropped);
  IF unknown IS NOT NULL THEN
    RAISE EXCEPTION 'bemi: % has no column %', relation, unknown USING ERRCODE = 'undefined_column';
  END IF;
  IF mask_columns && bemi.key_columns(relation) THEN
    RAISE EXCEPTION 'bemi: the primary key of % cannot be masked', relation
      USING ERRCODE = 'invalid_parameter_value', HINT = 'The key identifies the row in the trail; mask other columns.';
  END IF;
  SELECT c.relkind, c.relpersistence, c.relispartition INTO kind, persistence, is_partition
  FROM pg_catalog.pg_class c WHERE c.oid = relation;
  IF kind NOT IN ('r', 'p') THEN
    RAISE EXCEPTION 'bemi: % is not a table', relation
      USING ERRCODE = 'wrong_object_type', HINT = 'Only ordinary and partitioned tables can be tracked.';
  END IF;
  IF is_partition THEN
    RAISE EXCEPTION 'bemi: % is a partition', relation
      USING ERRCODE = 'wrong_object_type', HINT = 'Track its partitioned parent, which covers every partition.';
  END IF;
  PERFORM bemi.create_publication();
  -- The ALTER TABLEs below are bemi's own: the event trigger (bemi.track_new_tables) leaves them.
  previous_setting := pg_catalog.current_setting('bemi.tracking_new', true);
  PERFORM pg_catalog.set_config('bemi.tracking_new', 'on', true);
  FOR member IN SELECT bemi.members(relation) LOOP
    SELECT c.relpersistence INTO persistence FROM pg_catalog.pg_class c WHERE c.oid = member;
    IF persistence = 't' THEN
      RAISE EXCEPTION 'bemi: % is a temporary table, which cannot be tracked', member
        USING ERRCODE = 'wrong_object_type', HINT = 'Temporary tables are not decoded from the WAL.';
    ELSIF persistence = 'u' THEN
      RAISE EXCEPTION 'bemi: % is unlogged, so its changes never reach the WAL', member
        USING ERRCODE = 'wrong_object_type', HINT = pg_catalog.format('Make it logged first: ALTER TABLE %s SET LOGGED;', member);
    END IF;
    -- The replica identity it had before bemi, recorded once, for untrack.
    INSERT INTO bemi.tracking AS t (relation, root, schema, "table", replica_identity, ignore_columns, mask_columns)
    SELECT member, relation, n.nspname, c.relname, bemi.replica_identity(member),
      coalesce(ignore_columns, '{}'), coalesce(mask_columns, '{}')
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = member
    ON CONFLICT ON CONSTRAINT tracking_pkey DO UPDATE SET
      ignore_columns = coalesce(track.ignore_columns, t.ignore_columns), mask_columns = coalesce(track.mask_columns, t.mask_columns);
    PERFORM bemi.remember_key(member);
    IF (SELECT c.relreplident FROM pg_catalog.pg_class c WHERE c.oid = member) <> 'f' THEN
      EXECUTE pg_catalog.format('ALTER TABLE %s REPLICA IDENTITY FULL', member);
    END IF;
    -- Statement triggers of a parent do not fire for statements on a partition or child. The
    -- trigger fires in replica mode too (session_replication_role = replica): a context set
    -- there must be emitted, or the changes would carry the one before it.
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.tgrelid = member AND t.tgname = 'bemi_context') THEN
      EXECUTE pg_catalog.format(
        'CREATE TRIGGER bemi_context BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION bemi.context_trigger()', member);
    END IF;
    IF (SELECT t.tgenabled FROM pg_catalog.pg_trigger t WHERE t.tgrelid = member AND t.tgname = 'bemi_context') <> 'A' THEN
      EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER bemi_context', member);
    END IF;
    -- Partitions are published through their root; inheritance children by themselves.
    IF NOT (SELECT c.relispartition FROM pg_catalog.pg_class c WHERE c.oid = member) AND NOT EXISTS (
      SELECT FROM pg_catalog.pg_publication_rel r JOIN pg_catalog.pg_publication p ON p.oid = r.prpubid
      WHERE p.pubname = 'bemi' AND r.prrelid = member)
    THEN
      EXECUTE pg_catalog.format('ALTER PUBLICATION bemi ADD TABLE ONLY %s', member);
    END IF;
  END LOOP;
  PERFORM pg_catalog.set_config('bemi.tracking_new', coalesce(previous_setting, ''), true);
END
$$;

CREATE FUNCTION bemi.untrack(relation regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  member regclass;
  identity text;
BEGIN
  FOR member IN SELECT bemi.members(relation) LOOP
    EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS bemi_context ON %s', member);
    IF EXISTS (SELECT FROM pg_catalog.pg_publication_rel r JOIN pg_catalog.pg_publication p ON p.oid = r.prpubid
               WHERE p.pubname = 'bemi' AND r.prrelid = member) THEN
      EXECUTE pg_catalog.format('ALTER PUBLICATION bemi DROP TABLE ONLY %s', member);
    END IF;
    DELETE FROM bemi.tracking t WHERE t.relation = member RETURNING t.replica_identity INTO identity;
    IF identity IS NOT NULL AND identity <> bemi.replica_identity(member) THEN
      BEGIN
        EXECUTE pg_catalog.format('ALTER TABLE %s REPLICA IDENTITY %s', member, identity);
      EXCEPTION WHEN undefined_object THEN -- its index is gone since
        EXECUTE pg_catalog.format('ALTER TABLE %s REPLICA IDENTITY DEFAULT', member);
      END;
    END IF;
  END LOOP;
END
$$;

COMMENT ON FUNCTION bemi.untrack(regclass) IS
  'Stops tracking a table: removes its trigger and publication membership, restores its replica identity; its history stays.';

REVOKE ALL ON bemi.tracking, bemi.keys FROM PUBLIC;
REVOKE ALL ON FUNCTION bemi.remember_key(oid), bemi.key_columns_at(oid, pg_lsn), bemi.remember_keys() FROM PUBLIC;
COMMENT ON FUNCTION bemi.track(regclass, text[], text[]) IS
  'Tracks a table (idempotent): REPLICA IDENTITY FULL, the context trigger and the publication, on every partition and child too; optional column rules.';

-- bemi.key_columns only reads the catalog: time travel and revert call it as their caller.
REVOKE ALL ON FUNCTION bemi.members(regclass), bemi.replica_identity(regclass),
  bemi.track(regclass, text[], text[]), bemi.create_publication() FROM PUBLIC;

-- What is tracked is the administrator's choice, not the application's (docs/security.md).
REVOKE ALL ON FUNCTION bemi.untrack(regclass) FROM PUBLIC;
GRANT SELECT ON bemi.tracked TO PUBLIC;

-- The publication, at install, so that it is older than any slot: pgoutput cannot decode a
-- change made before the publication it is asked for existed. Not in a restore (pg_dump's and
-- pg_restore's sessions turn row_security off), which brings the publication with its tables.
DO $$
BEGIN
  IF pg_catalog.current_setting('row_security') = 'on' THEN
    PERFORM bemi.create_publication();
  END IF;
END
$$;
