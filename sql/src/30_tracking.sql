------------------------------------------------------------------------------------------
-- 3. Tracking: a tracked table carries the context trigger, logs whole rows (REPLICA
--    IDENTITY FULL) and is a member of the publication the slot decodes.
--    Holds: bemi.tracked, bemi.tracking, bemi.keys and the functions that keep them
--    (primary_key, key_columns, remember_key, key_columns_at, the event trigger
--    bemi_remember_keys), bemi.type_changes (remember_types, the event trigger
--    bemi_remember_types), bemi.members, bemi.virtual_columns, bemi.replica_identity,
--    bemi.create_publication, bemi.track, bemi.untrack.
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
  mask_columns text[] NOT NULL DEFAULT '{}',
  mask_attnums smallint[] NOT NULL DEFAULT '{}'
);

COMMENT ON TABLE bemi.tracking IS
  'Tracked tables and their members: when tracking began, the replica identity (as an ALTER TABLE clause) untrack restores, and the column rules.';
COMMENT ON COLUMN bemi.tracking.ignore_columns IS 'An UPDATE that changes only these columns is not stored.';
COMMENT ON COLUMN bemi.tracking.mask_columns IS 'These columns never reach the trail: their values are stored as "[masked]".';
COMMENT ON COLUMN bemi.tracking.mask_attnums IS 'The masked columns by number: masked under their names now too, when renamed.';

-- The rules of tables untracked while changes of theirs may still wait in the slot: storing
-- applies them until ingest has gone past the untrack (bemi.store forgets them then), so a
-- masked column never reaches the trail in clear.
CREATE TABLE bemi.untracked (
  relation oid PRIMARY KEY,
  ignore_columns text[] NOT NULL,
  mask_columns text[] NOT NULL,
  mask_attnums smallint[] NOT NULL,
  untracked_at pg_lsn NOT NULL
);

COMMENT ON TABLE bemi.untracked IS
  'The column rules of tables untracked while their changes may still be pending, until ingest has gone past untracked_at.';

-- The primary key columns of a table, in key order (1.0's bemi.primary_key, names only).
CREATE FUNCTION bemi.key_columns(relation oid) RETURNS text[]
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT pg_catalog.array_agg(k.col ->> 'name' ORDER BY k.ord)
  FROM pg_catalog.jsonb_array_elements(bemi.primary_key(relation::pg_catalog.regclass)) WITH ORDINALITY AS k(col, ord);
END;

SELECT pg_catalog.pg_extension_config_dump('bemi.tracking', '');
SELECT pg_catalog.pg_extension_config_dump('bemi.untracked', '');

-- The column rules storing applies to a relation's changes: bemi.track's or, after untrack,
-- the ones it had then (bemi.untracked). A masked column is masked under its name when it was
-- tracked and under its name now: a rename never lets it through.
CREATE FUNCTION bemi.column_rules(relid oid, OUT ignore_columns text[], OUT mask_columns text[])
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT coalesce(r.ignore_columns, '{}'),
    coalesce(r.mask_columns, '{}') || ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
      WHERE a.attrelid = relid AND a.attnum = ANY (r.mask_attnums) AND NOT a.attisdropped
        AND a.attname::text <> ALL (r.mask_columns))
  FROM (SELECT 1) AS one
  LEFT JOIN LATERAL (
    SELECT t.ignore_columns, t.mask_columns, t.mask_attnums, 1 AS rank FROM bemi.tracking t WHERE t.relation = relid
    UNION ALL
    SELECT u.ignore_columns, u.mask_columns, u.mask_attnums, 2 FROM bemi.untracked u WHERE u.relation = relid
    ORDER BY rank LIMIT 1
  ) AS r ON true;
END;

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

-- After ALTER TABLE of a tracked table, its key as it is now (whoever altered it). It refuses
-- what would break the table's writes or its trail: a replica identity other than FULL (with
-- NOTHING, PostgreSQL refuses the UPDATE and DELETE of a published table; with DEFAULT or USING
-- INDEX, "before" would hold only the key), and a virtual generated column (bemi.virtual_columns).
-- bemi.track and bemi.untrack pass: a table is FULL while it is in bemi.tracking.
CREATE FUNCTION bemi.remember_keys() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  altered regclass;
BEGIN
  FOR altered IN SELECT DISTINCT c.objid::pg_catalog.regclass FROM pg_catalog.pg_event_trigger_ddl_commands() AS c
    JOIN bemi.tracking t ON t.relation = c.objid
  WHERE c.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
  LOOP
    IF (SELECT r.relreplident FROM pg_catalog.pg_class r WHERE r.oid = altered) <> 'f' THEN
      RAISE EXCEPTION 'bemi: % is tracked, which needs REPLICA IDENTITY FULL', altered
        USING ERRCODE = 'object_not_in_prerequisite_state',
          HINT = pg_catalog.format('Untrack it first: SELECT bemi.untrack(%L); restores the replica identity it had before bemi.', altered::text);
    END IF;
    IF bemi.virtual_columns(altered) IS NOT NULL THEN
      RAISE EXCEPTION 'bemi: % is tracked, and its virtual generated columns (%) would make its UPDATE and DELETE fail',
        altered, bemi.virtual_columns(altered)
        USING ERRCODE = 'feature_not_supported',
          HINT = 'Add the column as GENERATED ALWAYS AS (...) STORED, or untrack the table first.';
    END IF;
    PERFORM bemi.remember_key(altered);
  END LOOP;
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

-- When a type's attributes changed (ALTER TYPE ... ADD, DROP, ALTER or RENAME ATTRIBUTE): a
-- composite value is written to the WAL as its attributes' values in order, without their
-- names, so a change written before reads under the new names (a swap of x and y would store
-- (1,2) as {"x":2,"y":1}). Changes written before since are stored as text, marked
-- (bemi.type_changed_at, bemi.convert_sql).
CREATE TABLE bemi.type_changes (
  type oid NOT NULL,
  since pg_lsn NOT NULL,
  PRIMARY KEY (type, since)
);

COMMENT ON TABLE bemi.type_changes IS 'When composite types changed their attributes: values written before are stored as text.';
SELECT pg_catalog.pg_extension_config_dump('bemi.type_changes', '');

-- The event trigger: an ALTER TYPE that adds, drops, alters or renames an attribute names the
-- composite type's relation; one that names the type itself (OWNER TO, RENAME TO, SET SCHEMA,
-- an enum's ADD or RENAME VALUE) leaves the attributes as they were.
CREATE FUNCTION bemi.remember_types() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  INSERT INTO bemi.type_changes (type, since)
  SELECT DISTINCT r.reltype, pg_catalog.pg_current_wal_insert_lsn()
  FROM pg_catalog.pg_event_trigger_ddl_commands() AS c
  JOIN pg_catalog.pg_class AS r ON r.oid = c.objid AND r.relkind = 'c'
  WHERE c.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
  ON CONFLICT DO NOTHING;
END
$$;

-- Event triggers need a superuser: elsewhere a type changed with changes pending is not seen.
DO $$
BEGIN
  IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
    CREATE EVENT TRIGGER bemi_remember_types ON ddl_command_end WHEN TAG IN ('ALTER TYPE')
      EXECUTE FUNCTION bemi.remember_types();
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

-- A table's virtual generated columns (PostgreSQL 18), NULL when it has none. PostgreSQL
-- cannot publish them, and refuses the UPDATE and DELETE of a published table whose replica
-- identity (FULL) holds one: bemi cannot track such a table. Before 18 every generated column is
-- stored.
CREATE FUNCTION bemi.virtual_columns(relation regclass) RETURNS text
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
  FROM pg_catalog.pg_attribute a
  WHERE a.attrelid = relation AND a.attgenerated = 'v' AND a.attnum > 0 AND NOT a.attisdropped;
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
-- From PostgreSQL 18 on it publishes stored generated columns, and sets one left by an earlier
-- install or version so: their values are in the trail, and they must be published, as a
-- replica identity (FULL) may not hold an unpublished one: the table's UPDATE and DELETE would
-- fail. Before 18 pgoutput never sends generated columns, and nothing is checked.
CREATE FUNCTION bemi.create_publication() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  generated "char";
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_publication p WHERE p.pubname = 'bemi') THEN
    CREATE PUBLICATION bemi WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true);
  END IF;
  IF pg_catalog.current_setting('server_version_num')::integer >= 180000 THEN
    EXECUTE 'SELECT p.pubgencols FROM pg_catalog.pg_publication p WHERE p.pubname = ''bemi''' INTO generated;
    IF generated <> 's' THEN
      EXECUTE 'ALTER PUBLICATION bemi SET (publish_generated_columns = stored)';
    END IF;
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
    ELSIF bemi.virtual_columns(member) IS NOT NULL THEN
      RAISE EXCEPTION 'bemi: % has virtual generated columns (%), which PostgreSQL cannot publish: tracked, its UPDATE and DELETE would fail',
        member, bemi.virtual_columns(member)
        USING ERRCODE = 'feature_not_supported',
          HINT = 'Make them STORED (drop each and add it again as GENERATED ALWAYS AS (...) STORED), or leave the table untracked.';
    END IF;
    -- The replica identity it had before bemi, recorded once, for untrack.
    INSERT INTO bemi.tracking AS t (relation, root, schema, "table", replica_identity, ignore_columns, mask_columns)
    SELECT member, relation, n.nspname, c.relname, bemi.replica_identity(member),
      coalesce(ignore_columns, '{}'), coalesce(mask_columns, '{}')
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = member
    ON CONFLICT ON CONSTRAINT tracking_pkey DO UPDATE SET
      ignore_columns = coalesce(track.ignore_columns, t.ignore_columns), mask_columns = coalesce(track.mask_columns, t.mask_columns);
    -- The masked columns by number too (kept when the rules are kept: they may be renamed since).
    UPDATE bemi.tracking t SET mask_attnums = ARRAY(SELECT a.attnum FROM pg_catalog.pg_attribute a
      WHERE a.attrelid = member AND NOT a.attisdropped
        AND (a.attname::text = ANY (t.mask_columns) OR (track.mask_columns IS NULL AND a.attnum = ANY (t.mask_attnums)))
      ORDER BY a.attnum)
    WHERE t.relation = member;
    DELETE FROM bemi.untracked u WHERE u.relation = member;
    PERFORM bemi.remember_key(member);
    -- Tracked again after bemi.untrack: the pause ends here (bemi.gaps).
    PERFORM bemi.close_gaps(bemi.slot_name(), pg_catalog.pg_current_wal_insert_lsn(), pg_catalog.clock_timestamp(), member);
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
    -- Changes made before may still wait in the slot: they are stored with the rules of now.
    INSERT INTO bemi.untracked AS u (relation, ignore_columns, mask_columns, mask_attnums, untracked_at)
    SELECT t.relation, r.ignore_columns, r.mask_columns, t.mask_attnums, pg_catalog.pg_current_wal_insert_lsn()
    FROM bemi.tracking t, bemi.column_rules(t.relation) r
    WHERE t.relation = member AND (r.ignore_columns <> '{}' OR r.mask_columns <> '{}')
    ON CONFLICT ON CONSTRAINT untracked_pkey DO UPDATE SET ignore_columns = excluded.ignore_columns, mask_columns = excluded.mask_columns,
      mask_attnums = excluded.mask_attnums, untracked_at = excluded.untracked_at;
    DELETE FROM bemi.tracking t WHERE t.relation = member RETURNING t.replica_identity INTO identity;
    -- Its writes are not captured from here on: a gap in its coverage until it is tracked again.
    IF identity IS NOT NULL THEN
      PERFORM bemi.open_gap(bemi.slot_name(), 'tracking paused', member, pg_catalog.pg_current_wal_insert_lsn(), pg_catalog.now(),
        NULL, NULL, 'bemi.untrack(): writes are not captured until bemi.track()');
    END IF;
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

REVOKE ALL ON bemi.tracking, bemi.untracked, bemi.keys, bemi.type_changes FROM PUBLIC;
REVOKE ALL ON FUNCTION bemi.remember_key(oid), bemi.key_columns_at(oid, pg_lsn), bemi.remember_keys(), bemi.remember_types() FROM PUBLIC;
COMMENT ON FUNCTION bemi.track(regclass, text[], text[]) IS
  'Tracks a table (idempotent): REPLICA IDENTITY FULL, the context trigger and the publication, on every partition and child too; optional column rules.';

-- bemi.key_columns only reads the catalog: time travel and revert call it as their caller.
REVOKE ALL ON FUNCTION bemi.members(regclass), bemi.virtual_columns(regclass), bemi.replica_identity(regclass),
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
