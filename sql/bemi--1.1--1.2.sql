\echo Use "ALTER EXTENSION bemi UPDATE TO '1.2'" to load this file. \quit

-- bemi 1.1 to 1.2. The current definition is sql/src/ (built into bemi--1.2.sql); this script
-- takes a 1.1 install there, and tests/test_upgrade_catalog.py checks that both end as the same
-- objects. What changes:
-- 1. The publication is made by bemi.track and bemi.create_slot when it is missing (a restore
--    brings its own, and one made by CREATE EXTENSION would be in its way).
-- 2. The trail's keys and indexes belong to each partition, not to bemi.changes, and no
--    partition belongs to the extension: pg_dump and pg_restore round-trip the trail.
-- 3. The objects that only drained a 1.0 slot go: now, when there is no such slot, else when
--    bemi.create_slot() (or bemi.ingest()) has drained it.
-- 4. bemi.revert_plan is made of small steps over the type bemi.revert_chain; it does what it did.
-- 5. Trust (docs/security.md): a context counts only in the transaction that set it and for
--    the statement it was written for; reading staged values runs no role's code; no message
--    stops ingest; ingest pins every setting that changes values; check_trail runs with its
--    caller's rights. Commit times are exact on PostgreSQL 14 too.

------------------------------------------------------------------------------------------
-- 1. The publication.
------------------------------------------------------------------------------------------

-- The publication is the set of tables the slot decodes; partitions report as their root.
-- Publications never belong to an extension: pg_dump keeps it, with its tables, like any
-- publication. So the install makes it (below) except in a restore, where the dump brings its
-- own (docs/backup.md), and bemi.track and bemi.create_slot make it when it is missing. One
-- left by an earlier install is used as it is.
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


REVOKE ALL ON FUNCTION bemi.create_publication() FROM PUBLIC;

CREATE OR REPLACE FUNCTION bemi.track(relation regclass, ignore_columns text[] DEFAULT NULL, mask_columns text[] DEFAULT NULL)
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
END
$$;


CREATE OR REPLACE FUNCTION bemi.create_slot() RETURNS pg_lsn
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  slot name := bemi.slot_name();
  start pg_lsn;
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = slot) THEN
    RAISE EXCEPTION 'bemi: the slot "%" already exists', slot
      USING ERRCODE = 'duplicate_object',
            HINT = 'Changes are being captured already. To start over: SELECT bemi.drop_slot(); SELECT bemi.create_slot();';
  END IF;
  -- First, before this transaction writes anything (a slot cannot be created after writes).
  SELECT s.lsn INTO start FROM pg_catalog.pg_create_logical_replication_slot(slot, 'pgoutput') AS s;
  INSERT INTO bemi.progress (slot_name, lsn) VALUES (slot, start)
  ON CONFLICT (slot_name) DO UPDATE SET lsn = excluded.lsn, ingested_at = excluded.ingested_at,
    committed_at = NULL, caught_up_at = NULL, part_of = NULL, part_stored = 0;
  PERFORM bemi.create_publication();
  -- Moving from 1.0: an install updated from 1.0 whose test_decoding slot "bemi" was not yet
  -- drained has bemi.drain_1_0() (bemi--1.1--1.2.sql). It stores what that slot holds, up to
  -- and past the new slot's start (a change stored by both is stored once: same position and
  -- ordinal), and drops itself with what only it used; then the old slot goes.
  IF pg_catalog.to_regprocedure('bemi.drain_1_0()') IS NOT NULL AND EXISTS (
    SELECT FROM pg_catalog.pg_replication_slots s
    WHERE s.slot_name = 'bemi' AND s.database = pg_catalog.current_database() AND s.plugin = 'test_decoding') THEN
    PERFORM bemi.drain_1_0();
    PERFORM pg_catalog.pg_drop_replication_slot('bemi');
    DELETE FROM bemi.progress p WHERE p.slot_name = 'bemi';
  END IF;
  RETURN start;
END
$$;


------------------------------------------------------------------------------------------
-- 2. The trail: keys and indexes per partition, partitions outside the extension.
------------------------------------------------------------------------------------------

-- The keys and indexes of a partition of the trail, made when it has none: for each partition
-- ingest makes, and for one made by someone else (pg_partman). They are the partition's own,
-- not partitioned indexes of bemi.changes: those would be cloned onto each partition pg_restore
-- attaches, before it creates the partition's own from the dump, which would then fail.
CREATE FUNCTION bemi.index_partition(partition regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_index i WHERE i.indrelid = partition AND i.indisunique) THEN
    RETURN;
  END IF;
  -- A change is stored once: its WAL position and ordinal, with its one commit time (the
  -- partition key), are unique. Ingest inserts with ON CONFLICT DO NOTHING against it.
  EXECUTE pg_catalog.format('ALTER TABLE %s ADD PRIMARY KEY (id, committed_at), ADD UNIQUE (position, ordinal, committed_at)',
    partition);
  -- Commit times grow with insertion order: a BRIN index serves time ranges at almost no cost to ingest.
  EXECUTE pg_catalog.format('CREATE INDEX ON %s USING brin (committed_at)', partition);
  EXECUTE pg_catalog.format('CREATE INDEX ON %s USING gin (context jsonb_path_ops)', partition);
  -- Time travel (section 8): the history of one row, in time order; an UPDATE that moved its key
  -- away; a TRUNCATE.
  EXECUTE pg_catalog.format('CREATE INDEX ON %s (schema, "table", primary_key, committed_at, id)', partition);
  EXECUTE pg_catalog.format('CREATE INDEX ON %s (schema, "table", previous_key, committed_at, id) '
    'WHERE previous_key IS NOT NULL', partition);
  EXECUTE pg_catalog.format('CREATE INDEX ON %s (schema, "table", committed_at, id) '
    'WHERE operation = ''TRUNCATE''', partition);
  -- Revert (section 9): the changes of one transaction.
  EXECUTE pg_catalog.format('CREATE INDEX ON %s (transaction_id)', partition);
END
$$;


CREATE OR REPLACE FUNCTION bemi.create_partitions(from_at timestamptz, to_at timestamptz) RETURNS SETOF regclass
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  step interval := bemi.partition_interval();
  cursor timestamptz := from_at;
  covered_to timestamptz;
  lower timestamptz;
  upper timestamptz;
  name text;
  created regclass;
  covering regclass;
BEGIN
  -- Walk from one time to the other: over partitions that exist (whatever their bounds, as
  -- pg_partman's may be), else a new one for the rest of the period, up to the next one.
  WHILE cursor <= to_at LOOP
    SELECT p.partition, p.to_at INTO covering, covered_to FROM bemi.partitions p
    WHERE cursor >= p.from_at AND cursor < p.to_at;
    IF FOUND THEN
      PERFORM bemi.index_partition(covering);
      cursor := covered_to;
      CONTINUE;
    END IF;
    lower := greatest(bemi.period_start(cursor, step),
                      (SELECT pg_catalog.max(p.to_at) FROM bemi.partitions p WHERE p.to_at <= cursor));
    upper := least(bemi.period_start(cursor, step) + step,
                   (SELECT pg_catalog.min(p.from_at) FROM bemi.partitions p WHERE p.from_at > cursor));
    name := 'changes_' || pg_catalog.to_char(lower AT TIME ZONE 'UTC',
      CASE WHEN step < interval '1 day' OR lower <> bemi.period_start(lower, step) THEN 'YYYYMMDD"_"HH24MISS' ELSE 'YYYYMMDD' END);
    EXECUTE pg_catalog.format('CREATE TABLE bemi.%I (LIKE bemi.changes INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
    EXECUTE pg_catalog.format('ALTER TABLE bemi.changes ATTACH PARTITION bemi.%I FOR VALUES FROM (%L) TO (%L)',
      name, lower, upper);
    created := pg_catalog.format('bemi.%I', name)::regclass;
    PERFORM bemi.index_partition(created);
    RETURN NEXT created;
    cursor := upper;
  END LOOP;
END
$$;


CREATE OR REPLACE FUNCTION bemi.store(through pg_lsn, part_of pg_lsn DEFAULT NULL, part_stored bigint DEFAULT 0,
  caught_up_at timestamptz DEFAULT NULL, source_slot name DEFAULT NULL, source_database text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET timezone = 'UTC' SET work_mem = '64MB'
SET array_nulls = on SET xmloption = content SET lc_monetary = 'C' SET lock_timeout = 0
AS $$
DECLARE
  queries text;
  inserted bigint := 0;
  contexts jsonb;
  n bigint;
  oldest timestamptz;
  newest timestamptz;
  change record;
  r bemi.staged_relations;
  columns text := 'schema, "table", primary_key, operation, before, after, context, committed_at, '
                  'transaction_id, position, ordinal, problem, partial, previous_key';
BEGIN
  PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('bemi.ingest'));
  IF source_database IS NOT NULL THEN  -- a trail database: the changes are another database's
    columns := 'database, ' || columns;
  END IF;
  SELECT pg_catalog.string_agg(bemi.convert_sql(x), ' UNION ALL ') INTO queries
  FROM bemi.staged_relations x WHERE x.relation IN (SELECT s.relation FROM bemi.staged s);
  contexts := bemi.staged_contexts();
  -- Partitions for these commit times, and for the next period ahead of them.
  SELECT pg_catalog.min(s.committed_at), pg_catalog.max(s.committed_at) INTO oldest, newest FROM bemi.staged s;
  IF oldest IS NOT NULL THEN
    PERFORM bemi.create_partitions(oldest, newest + bemi.partition_interval());
  END IF;
  IF queries IS NOT NULL THEN
    BEGIN
      EXECUTE pg_catalog.format('INSERT INTO bemi.changes (%s) SELECT %s FROM (%s) AS c ORDER BY c.seq '
        'ON CONFLICT DO NOTHING', columns, columns, queries)
        USING contexts, NULL, NULL, source_database;
      GET DIAGNOSTICS inserted = ROW_COUNT;
    EXCEPTION WHEN OTHERS THEN
      -- Some value cannot be converted: store change by change, each that fails as text.
      FOR change IN SELECT s.seq, s.relation FROM bemi.staged s ORDER BY s.seq LOOP
        SELECT * INTO r FROM bemi.staged_relations x WHERE x.relation = change.relation;
        BEGIN
          EXECUTE pg_catalog.format('INSERT INTO bemi.changes (%s) SELECT %s FROM (%s) AS c '
            'ON CONFLICT DO NOTHING', columns, columns, bemi.convert_sql(r, 's.seq = $2'))
            USING contexts, change.seq, NULL, source_database;
        EXCEPTION WHEN OTHERS THEN
          EXECUTE pg_catalog.format('INSERT INTO bemi.changes (%s) SELECT %s FROM (%s) AS c '
            'ON CONFLICT DO NOTHING', columns,
            pg_catalog.replace(columns, 'problem', '$3'), bemi.convert_sql(r, 's.seq = $2', true))
            USING contexts, change.seq, SQLSTATE || ': ' || SQLERRM, source_database;
        END;
        GET DIAGNOSTICS n = ROW_COUNT;
        inserted := inserted + n;
      END LOOP;
    END;
  END IF;
  DELETE FROM bemi.staged;
  DELETE FROM bemi.staged_relations;
  -- (A trail database gets its source's progress row with the first batch it stores.)
  INSERT INTO bemi.progress AS p (slot_name, lsn, part_of, part_stored, committed_at, caught_up_at, stored)
  VALUES (coalesce(source_slot, bemi.slot_name()), through, store.part_of, store.part_stored, newest, store.caught_up_at, inserted)
  ON CONFLICT (slot_name) DO UPDATE SET lsn = greatest(p.lsn, excluded.lsn), part_of = excluded.part_of,
    part_stored = excluded.part_stored, committed_at = greatest(p.committed_at, excluded.committed_at),
    caught_up_at = coalesce(excluded.caught_up_at, p.caught_up_at), ingested_at = pg_catalog.now(), stored = excluded.stored;
  -- The slot is confirmed up to these rows once this commits: they must be on disk first.
  PERFORM pg_catalog.set_config('synchronous_commit', 'on', true);
  RETURN inserted;
END
$$;


-- The keys and indexes of bemi.changes go, and with them their copies on every partition;
-- each partition then gets its own (rebuilt from its rows: this takes a while on a long trail).
ALTER TABLE bemi.changes DROP CONSTRAINT changes_pkey, DROP CONSTRAINT changes_position_ordinal_committed_at_key;
DROP INDEX bemi.changes_committed_at_idx, bemi.changes_context_idx, bemi.changes_row_history_idx,
  bemi.changes_previous_key_idx, bemi.changes_truncate_idx, bemi.changes_transaction_idx;

-- The partitions the update to 1.1 made from a 1.0 trail were made inside the extension script,
-- so they became members and configuration tables of the extension: pg_dump then leaves their
-- definition out, and a restore has nowhere to put their rows (pg_dump --schema even crashes on
-- them). They leave the extension, and so its configuration (ALTER EXTENSION ... DROP does both).
DO $$
DECLARE
  p regclass;
BEGIN
  FOR p IN SELECT x.partition FROM bemi.partitions x ORDER BY x.from_at LOOP
    IF EXISTS (SELECT FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
               WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = p
                 AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.deptype = 'e'
                 AND e.extname = 'bemi') THEN
      EXECUTE pg_catalog.format('ALTER EXTENSION bemi DROP TABLE %s', p);
    END IF;
    PERFORM bemi.index_partition(p);
  END LOOP;
END
$$;

-- The update to 1.1 dropped a configuration table (the 1.0 trail) and its sequence inside the
-- script, which leaves their OIDs in pg_extension.extconfig. Only a superuser may remove them.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension e, pg_catalog.unnest(e.extconfig) AS c(relid)
                 WHERE e.extname = 'bemi' AND NOT EXISTS (SELECT FROM pg_catalog.pg_class r WHERE r.oid = c.relid)) THEN
    RETURN;
  ELSIF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
    UPDATE pg_catalog.pg_extension e SET extconfig = k.config, extcondition = k.condition
    FROM (SELECT pg_catalog.array_agg(x.extconfig[i] ORDER BY i) AS config,
                 pg_catalog.array_agg(x.extcondition[i] ORDER BY i) AS condition
          FROM pg_catalog.pg_extension x, pg_catalog.generate_subscripts(x.extconfig, 1) AS i
          WHERE x.extname = 'bemi' AND EXISTS (SELECT FROM pg_catalog.pg_class r WHERE r.oid = x.extconfig[i])) AS k
    WHERE e.extname = 'bemi';
  ELSE
    RAISE NOTICE 'bemi: pg_extension.extconfig names tables that no longer exist (the 1.0 trail); pg_dump skips them'
      USING HINT = 'A superuser can remove them: ALTER EXTENSION bemi UPDATE runs as one does that.';
  END IF;
END
$$;

------------------------------------------------------------------------------------------
-- 3. What only drained a 1.0 slot.
------------------------------------------------------------------------------------------

-- The 1.0 ingest inserts as 1.1 stores, without naming the key it no longer has.
DO $$
BEGIN
  EXECUTE pg_catalog.replace(pg_catalog.pg_get_functiondef('bemi.ingest_test_decoding(integer)'::pg_catalog.regprocedure),
    'ON CONFLICT (position, ordinal, committed_at) DO NOTHING', 'ON CONFLICT DO NOTHING');
END
$$;

-- Stores what a 1.0 slot still holds (bemi.create_slot calls it, then drops the slot), and
-- drops the objects only that needed, itself last. SECURITY DEFINER: they belong to the
-- extension's owner, who alone may take them out of the extension.
CREATE FUNCTION bemi.drain_1_0() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  as_extension boolean := EXISTS (SELECT FROM pg_catalog.pg_extension e WHERE e.extname = 'bemi');
  object text;
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_replication_slots s
             WHERE s.slot_name = 'bemi' AND s.database = pg_catalog.current_database() AND s.plugin = 'test_decoding') THEN
    PERFORM bemi.ingest_test_decoding(1000000000);
  END IF;
  FOREACH object IN ARRAY ARRAY['FUNCTION bemi.ingest_test_decoding(integer)', 'FUNCTION bemi.decode(integer, boolean)',
    'FUNCTION bemi.parse_tuple(text, boolean, boolean)', 'FUNCTION bemi.fill_unchanged(jsonb, jsonb)',
    'FUNCTION bemi.json_value(text, text, text)', 'FUNCTION bemi.cast_json(text, text)', 'FUNCTION bemi.unquote_ident(text)',
    'FUNCTION bemi.deleted_nulls(text, text, jsonb, bigint)', 'FUNCTION bemi.remember_names()', 'VIEW bemi.tracked_names',
    'TABLE bemi.names', 'FUNCTION bemi.partition_family(regclass)', 'FUNCTION bemi.drain_1_0()']
  LOOP
    IF as_extension THEN
      EXECUTE pg_catalog.format('ALTER EXTENSION bemi DROP %s', object);
    END IF;
    EXECUTE pg_catalog.format('DROP %s', object);
  END LOOP;
END
$$;

REVOKE ALL ON FUNCTION bemi.drain_1_0() FROM PUBLIC;

-- Without a 1.0 slot to drain, they go now.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_replication_slots s
                 WHERE s.slot_name = 'bemi' AND s.database = pg_catalog.current_database() AND s.plugin = 'test_decoding') THEN
    PERFORM bemi.drain_1_0();
  END IF;
END
$$;

------------------------------------------------------------------------------------------
-- 4. bemi.revert_plan in steps.
------------------------------------------------------------------------------------------

-- A row's net effect over the changes a revert undoes: its changes chained in commit order
-- (through primary key changes), the row before the first of them and after the last.
CREATE TYPE bemi.revert_chain AS (
  relation oid,
  table_name text,    -- "schema.table" as in the trail: its table in the plan's tables
  primary_key text,   -- bemi.changes.primary_key of the last change
  first jsonb,        -- the row before the first change (NULL: the first created it)
  last jsonb,         -- the row after the last change (NULL: the last deleted it)
  gone boolean,       -- the last change is a DELETE
  ids text,           -- the ids of its changes, comma-separated, in commit order
  first_id bigint,
  last_id bigint
);

COMMENT ON TYPE bemi.revert_chain IS 'A row''s net effect over the changes a revert undoes (bemi.revert_plan).';

-- The changes a revert undoes, checked: their distinct ids, and whether some change moved a
-- row's key or is of a table without one (then rows are chained change by change). Raises on
-- bad arguments, unknown ids, TRUNCATEs and changes whose images are incomplete.
CREATE FUNCTION bemi.revert_ids(changes regclass, change_ids bigint[], on_conflict text,
                                OUT ids bigint[], OUT by_change boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  missing bigint[];
  truncates bigint[];
  incomplete bigint[];
BEGIN
  IF on_conflict IS NULL OR on_conflict NOT IN ('error', 'skip', 'overwrite') THEN
    RAISE EXCEPTION 'bemi: on_conflict must be ''error'', ''skip'' or ''overwrite'', not %', coalesce(pg_catalog.quote_literal(on_conflict), 'NULL')
      USING ERRCODE = 'invalid_parameter_value';
  ELSIF change_ids IS NULL THEN
    RAISE EXCEPTION 'bemi: change_ids must not be NULL' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  ids := (SELECT coalesce(pg_catalog.array_agg(DISTINCT i ORDER BY i), '{}') FROM pg_catalog.unnest(change_ids) AS i WHERE i IS NOT NULL);
  EXECUTE pg_catalog.format($q$
    SELECT pg_catalog.array_agg(i ORDER BY i) FILTER (WHERE x.id IS NULL),
      pg_catalog.array_agg(i ORDER BY i) FILTER (WHERE x.operation = 'TRUNCATE'),
      pg_catalog.array_agg(i ORDER BY i) FILTER (WHERE x.problem IS NOT NULL OR x.partial),
      coalesce(pg_catalog.bool_or(x.previous_key IS NOT NULL OR x.primary_key IS NULL), false)
    FROM pg_catalog.unnest($1) AS i LEFT JOIN %s AS x ON x.id = i$q$, changes)
    INTO missing, truncates, incomplete, by_change USING ids;
  IF missing IS NOT NULL THEN
    RAISE EXCEPTION 'bemi: no changes with ids % in the trail', missing USING ERRCODE = 'invalid_parameter_value';
  ELSIF truncates IS NOT NULL THEN
    RAISE EXCEPTION 'bemi: changes % are TRUNCATEs, which cannot be reverted', truncates
      USING ERRCODE = 'feature_not_supported',
            HINT = 'TRUNCATE does not write the rows it removes to the WAL; leave these changes out (restore the rows from a backup).';
  END IF;
  PERFORM bemi.refuse_incomplete(incomplete);
END
$$;

-- What the plan needs of each table the changes were made in (bemi.revert_table), by its name
-- in the trail ("schema.table"), looked up in the order of each table's first change.
CREATE FUNCTION bemi.revert_tables(changes regclass, ids bigint[]) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  t record;
  tables jsonb := '{}';
BEGIN
  FOR t IN EXECUTE pg_catalog.format($q$
    SELECT f.schema, f."table", f.id
    FROM (SELECT DISTINCT ON (x.schema, x."table") x.schema, x."table", x.id, x.committed_at
          FROM %s AS x WHERE x.id = ANY ($1) ORDER BY x.schema, x."table", x.committed_at, x.id) AS f
    ORDER BY f.committed_at, f.id$q$, changes) USING ids
  LOOP
    tables := tables || pg_catalog.jsonb_build_object(t.schema || '.' || t."table", bemi.revert_table(t.schema, t."table", t.id));
  END LOOP;
  RETURN tables;
END
$$;

-- Each row's chain when no change moved a key and every table has one (the usual case): the
-- changes under one key, grouped in one query, in the order of their first change.
CREATE FUNCTION bemi.revert_chains_by_key(changes regclass, ids bigint[], tables jsonb) RETURNS SETOF bemi.revert_chain
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY EXECUTE pg_catalog.format($q$
    SELECT ($2 -> (f.schema || '.' || f."table") ->> 'relation')::pg_catalog.oid, f.schema || '.' || f."table",
      f.primary_key, f.first, CASE WHEN l.operation = 'DELETE' THEN NULL ELSE l.after END, l.operation = 'DELETE',
      f.ids, f.first_id, l.id
    FROM (SELECT DISTINCT ON (x.schema, x."table", x.primary_key) x.schema, x."table", x.primary_key, x.id AS first_id,
            x.committed_at, CASE WHEN x.operation = 'CREATE' THEN NULL ELSE x.before END AS first,
            pg_catalog.string_agg(x.id::text, ',') OVER (PARTITION BY x.schema, x."table", x.primary_key
              ORDER BY x.committed_at, x.id ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS ids
          FROM %1$s AS x WHERE x.id = ANY ($1)
          ORDER BY x.schema, x."table", x.primary_key, x.committed_at, x.id) AS f
    JOIN (SELECT DISTINCT ON (x.schema, x."table", x.primary_key) x.schema, x."table", x.primary_key, x.id, x.operation, x.after
          FROM %1$s AS x WHERE x.id = ANY ($1)
          ORDER BY x.schema, x."table", x.primary_key, x.committed_at DESC, x.id DESC) AS l
      ON (l.schema, l."table", l.primary_key) = (f.schema, f."table", f.primary_key)
    ORDER BY f.committed_at, f.first_id$q$, changes) USING ids, tables;
END
$$;

-- Each row's chain, followed change by change in commit order: a change continues the chain
-- whose row has its old key (for a CREATE: one whose row was deleted under its key). Rows of a
-- table without a key are keyed by value: equal rows share a key, so a key has a list of chains.
CREATE FUNCTION bemi.revert_chains_by_change(changes regclass, ids bigint[], tables jsonb) RETURNS SETOF bemi.revert_chain
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  c record;
  chains bemi.revert_chain[] := '{}';
  open_chains jsonb := '{}'; -- "relation key" -> the chains of the rows that now have this key
  relation oid;
  keys text[];
  old_key text;
  new_key text;
  found_key text;
  candidate integer;
  n integer;
BEGIN
  FOR c IN EXECUTE pg_catalog.format('SELECT x.id, x.schema, x."table", x.primary_key, x.operation, x.before, x.after '
                                     'FROM %s AS x WHERE x.id = ANY ($1) ORDER BY x.committed_at, x.id', changes) USING ids LOOP
    relation := (tables -> (c.schema || '.' || c."table") ->> 'relation')::oid;
    keys := bemi.text_array(tables -> (c.schema || '.' || c."table") -> 'keys');
    old_key := relation || ' ' || coalesce(bemi.image_key(c.before, keys), c.before::text);
    new_key := relation || ' ' || coalesce(bemi.image_key(c.after, keys), c.after::text);
    found_key := CASE WHEN c.operation = 'CREATE' THEN new_key ELSE old_key END;
    n := NULL;
    FOREACH candidate IN ARRAY coalesce(bemi.text_array(open_chains -> found_key)::integer[], '{}') LOOP
      IF (chains[candidate]).gone = (c.operation = 'CREATE') THEN
        n := candidate;
        EXIT;
      END IF;
    END LOOP;
    IF n IS NULL THEN
      n := pg_catalog.cardinality(chains) + 1;
      chains[n] := ROW(relation, c.schema || '.' || c."table", NULL, CASE WHEN c.operation = 'CREATE' THEN NULL ELSE c.before END,
                       NULL, NULL, c.id::text, c.id, NULL)::bemi.revert_chain;
    ELSE
      chains[n].ids := (chains[n]).ids || ',' || c.id;
      open_chains := open_chains || pg_catalog.jsonb_build_object(found_key,
        pg_catalog.to_jsonb(pg_catalog.array_remove(bemi.text_array(open_chains -> found_key)::integer[], n)));
    END IF;
    chains[n].last := CASE WHEN c.operation = 'DELETE' THEN NULL ELSE c.after END;
    chains[n].gone := c.operation = 'DELETE';
    chains[n].primary_key := c.primary_key;
    chains[n].last_id := c.id;
    found_key := CASE WHEN c.operation = 'DELETE' THEN old_key ELSE new_key END;
    open_chains := open_chains || pg_catalog.jsonb_build_object(found_key,
      coalesce(open_chains -> found_key, '[]') || pg_catalog.to_jsonb(n));
  END LOOP;
  RETURN QUERY SELECT * FROM pg_catalog.unnest(chains);
END
$$;

-- Each row's chain, in the order of its first change.
CREATE FUNCTION bemi.revert_chains(changes regclass, ids bigint[], tables jsonb, by_change boolean)
RETURNS SETOF bemi.revert_chain
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF by_change THEN
    RETURN QUERY SELECT * FROM bemi.revert_chains_by_change(changes, ids, tables);
  ELSE
    RETURN QUERY SELECT * FROM bemi.revert_chains_by_key(changes, ids, tables);
  END IF;
END
$$;

-- What one row needs, checked against the row as it is now (locked until the caller's
-- transaction ends): a row must still be as the changes left it. verdict: unchanged, conflict
-- (on_conflict => 'error'), skipped, deleted, inserted or updated; step: what to write, if
-- anything; conflict: the row named for the error; taken: a row of a table without a key this
-- row claims (no other row may take it).
CREATE FUNCTION bemi.revert_row(chain bemi.revert_chain, info jsonb, on_conflict text, taken tid[],
                                OUT verdict text, OUT step jsonb, OUT conflict text, OUT claimed tid)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  relation regclass := chain.relation;
  keys text[] := bemi.text_array(info -> 'keys');
  writable text[] := bemi.text_array(info -> 'writable');
  ignored text[] := bemi.text_array(info -> 'ignored');
  target jsonb := chain.first;
  expected jsonb := chain.last;
  found_expected jsonb;
  expected_id tid;
  found_target jsonb;
  target_id tid;
  typed_target jsonb;
BEGIN
  IF expected IS NOT NULL THEN
    SELECT l.image_now, l.row_id INTO found_expected, expected_id FROM bemi.locked_row(relation, keys, expected, taken) AS l;
    IF keys IS NULL AND expected_id IS NOT NULL THEN
      claimed := expected_id;
    END IF;
  END IF;
  IF target IS NOT NULL AND keys IS NOT NULL THEN
    SELECT l.image_now, l.row_id INTO found_target, target_id FROM bemi.locked_row(relation, keys, target, taken) AS l;
    typed_target := bemi.typed_image(relation, target);
  END IF;
  verdict := CASE
    WHEN target IS NOT DISTINCT FROM expected THEN 'unchanged'
    -- Already as the revert would leave it (a cascade, or someone else, got there first).
    WHEN keys IS NOT NULL AND target IS NULL AND found_expected IS NULL THEN 'unchanged'
    WHEN keys IS NOT NULL AND target IS NOT NULL AND found_target IS NOT NULL
      AND pg_catalog.cardinality(bemi.differing_columns(found_target, typed_target, bemi.known_columns(target, writable, ignored))) = 0
      AND (found_expected IS NULL OR expected_id = target_id) THEN 'unchanged'
    WHEN expected IS NOT NULL AND (found_expected IS NULL OR pg_catalog.cardinality(bemi.differing_columns(
        found_expected, bemi.typed_image(relation, expected), bemi.known_columns(expected, writable, ignored))) > 0) THEN 'conflict'
    WHEN found_target IS NOT NULL AND target_id IS DISTINCT FROM expected_id THEN 'conflict'
    ELSE 'revert' END;
  IF verdict = 'conflict' AND on_conflict = 'error' THEN
    conflict := pg_catalog.format('%I.%I %s (changes %s)', info ->> 'schema', info ->> 'table',
      coalesce(bemi.image_key(coalesce(expected, target), keys), coalesce(expected, target)::text), chain.ids);
    RETURN;
  ELSIF verdict = 'conflict' AND on_conflict = 'skip' THEN
    verdict := 'skipped';
    RETURN;
  ELSIF verdict = 'unchanged' THEN
    RETURN;
  END IF;
  -- The row to write over: the one the changes left, else (overwrite) the one with the key.
  IF found_expected IS NULL AND keys IS NOT NULL THEN
    found_expected := found_target;
    expected_id := target_id;
  END IF;
  step := pg_catalog.jsonb_build_object('relation', relation::oid, 'keys', info -> 'keys', 'target', target,
    'at', coalesce(expected, target), 'row_id', expected_id::text, 'first_id', chain.first_id,
    'last_id', chain.last_id, 'depth', info -> 'depth');
  IF target IS NULL AND found_expected IS NULL THEN
    verdict := 'unchanged';
    step := NULL;
  ELSIF target IS NULL THEN
    verdict := 'deleted';
    step := step || '{"kind": "delete", "phase": 3}';
  ELSIF found_expected IS NULL THEN
    verdict := 'inserted';
    step := step || pg_catalog.jsonb_build_object('kind', 'insert', 'phase', 1, 'columns', bemi.known_columns(target, writable));
  ELSE
    verdict := 'updated';
    step := step || pg_catalog.jsonb_build_object('kind', 'update', 'phase', 2, 'columns',
      bemi.differing_columns(found_expected, typed_target, bemi.known_columns(target, writable)));
    IF step -> 'columns' = '[]' THEN
      verdict := 'unchanged';
      step := NULL;
    ELSE
      -- Located by the key it has now (the changes may have moved it).
      step := step || pg_catalog.jsonb_build_object('at', found_expected);
    END IF;
  END IF;
END
$$;

CREATE OR REPLACE FUNCTION bemi.revert_plan(changes regclass, change_ids bigint[], on_conflict text,
                                 OUT ids bigint[], OUT steps jsonb, OUT results jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  by_change boolean;
  tables jsonb;
  chain bemi.revert_chain;
  checked record;
  taken tid[] := '{}';    -- rows of tables without a key that a step has claimed
  conflicts text[] := '{}';
  planned jsonb[] := '{}';
  result_rows jsonb[] := '{}';
BEGIN
  SELECT r.ids, r.by_change INTO ids, by_change FROM bemi.revert_ids(changes, change_ids, on_conflict) AS r;
  tables := bemi.revert_tables(changes, ids);
  -- Each row's changes, chained: its net effect is its first before and its last after.
  FOR chain IN SELECT * FROM bemi.revert_chains(changes, ids, tables, by_change) LOOP
    checked := bemi.revert_row(chain, tables -> chain.table_name, on_conflict, taken);
    IF checked.claimed IS NOT NULL THEN
      taken[pg_catalog.cardinality(taken) + 1] := checked.claimed;
    END IF;
    IF checked.conflict IS NOT NULL THEN
      conflicts[pg_catalog.cardinality(conflicts) + 1] := checked.conflict;
    END IF;
    IF checked.step IS NOT NULL THEN
      planned[pg_catalog.cardinality(planned) + 1] := checked.step;
    END IF;
    result_rows[pg_catalog.cardinality(result_rows) + 1] := pg_catalog.jsonb_build_array(chain.last_id,
      tables -> chain.table_name ->> 'schema', tables -> chain.table_name ->> 'table',
      coalesce(bemi.image_key(coalesce(chain.first, chain.last), bemi.text_array(tables -> chain.table_name -> 'keys')),
               chain.primary_key), checked.verdict);
  END LOOP;
  IF pg_catalog.cardinality(conflicts) > 0 THEN
    RAISE EXCEPTION 'bemi: % rows changed since, nothing was reverted: %', pg_catalog.cardinality(conflicts),
        pg_catalog.array_to_string(conflicts[1:20], ', ') || CASE WHEN pg_catalog.cardinality(conflicts) > 20 THEN ', ...' ELSE '' END
      USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'Pass on_conflict => ''skip'' to leave those rows alone, or ''overwrite'' to revert them anyway.';
  END IF;
  results := pg_catalog.to_jsonb(result_rows);
  steps := (SELECT coalesce(pg_catalog.jsonb_agg(s || pg_catalog.jsonb_build_object('sql', bemi.revert_sql(s))
                ORDER BY (s ->> 'phase')::integer,
                CASE WHEN s ->> 'phase' = '3' THEN -(s ->> 'depth')::integer ELSE (s ->> 'depth')::integer END,
                CASE WHEN s ->> 'phase' = '3' THEN -(s ->> 'last_id')::bigint ELSE (s ->> 'first_id')::bigint END), '[]')
            FROM pg_catalog.unnest(planned) AS s);
END
$$;


------------------------------------------------------------------------------------------
-- 5. Trust.
------------------------------------------------------------------------------------------

-- Contexts: marked with their transaction, one statement's comment for that statement.
CREATE OR REPLACE FUNCTION bemi.transaction_mark() RETURNS text
LANGUAGE sql STABLE
RETURN pg_catalog.extract('epoch', pg_catalog.now())::pg_catalog.text;

CREATE OR REPLACE FUNCTION bemi.set_context(context jsonb) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
  body pg_catalog.text := context::pg_catalog.text;
  setting pg_catalog.text := pg_catalog.current_setting('bemi.max_context_bytes', true);
  limit_bytes pg_catalog.int4 := CASE WHEN setting OPERATOR(pg_catalog.<>) '' THEN setting::pg_catalog.int4 ELSE 65536 END;
  mark pg_catalog.text := bemi.transaction_mark();
  emitted pg_catalog.text := CASE WHEN pg_catalog.current_setting('bemi.mark', true) OPERATOR(pg_catalog.=) mark
    THEN pg_catalog.current_setting('bemi.emitted', true) ELSE '' END;
  written pg_catalog.pg_lsn;
BEGIN
  IF pg_catalog.jsonb_typeof(context) OPERATOR(pg_catalog.<>) 'object' THEN
    RAISE EXCEPTION 'bemi: context must be a JSON object, not %', pg_catalog.jsonb_typeof(context)
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass an object such as {"user_id": 7}, or NULL to clear.';
  END IF;
  IF pg_catalog.octet_length(body) OPERATOR(pg_catalog.>) limit_bytes THEN
    RAISE EXCEPTION 'bemi: context is % bytes, over the limit of % bytes', pg_catalog.octet_length(body), limit_bytes
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Keep contexts small, or raise the setting bemi.max_context_bytes.';
  END IF;
  -- NULL and an empty object are no context at all. Assignments, not PERFORM: PL/pgSQL
  -- evaluates them as simple expressions, without running a query.
  body := CASE WHEN body IS NULL OR body OPERATOR(pg_catalog.=) '{}' THEN '' ELSE body END;
  setting := pg_catalog.set_config('bemi.context', body, true);
  setting := pg_catalog.set_config('bemi.emitted', emitted, true);
  setting := pg_catalog.set_config('bemi.mark', mark, true);
  -- After a write with another context, the new one goes into the WAL now: a later statement
  -- whose trigger does not fire (disabled by the table's owner) must not carry the old one.
  IF emitted OPERATOR(pg_catalog.<>) '' AND emitted OPERATOR(pg_catalog.<>) body THEN
    written := pg_catalog.pg_logical_emit_message(true, 'bemi', CASE WHEN body OPERATOR(pg_catalog.=) '' THEN '{}' ELSE body END);
    setting := pg_catalog.set_config('bemi.emitted', body, true);
  END IF;
END
$$;

CREATE OR REPLACE FUNCTION bemi.context() RETURNS jsonb
LANGUAGE sql STABLE
RETURN CASE WHEN pg_catalog.current_setting('bemi.mark', true) OPERATOR(pg_catalog.=) bemi.transaction_mark()
  THEN NULLIF(pg_catalog.current_setting('bemi.context', true), '')::pg_catalog.jsonb END;

CREATE OR REPLACE FUNCTION bemi.comment_context(query text, emitted text) RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
  setting pg_catalog.text := pg_catalog.current_setting('bemi.max_context_bytes', true);
  limit_bytes pg_catalog.int4 := CASE WHEN setting OPERATOR(pg_catalog.<>) '' THEN setting::pg_catalog.int4 ELSE 65536 END;
  tail pg_catalog.text := pg_catalog.rtrim(query, E' \t\r\n;');
  opening pg_catalog.int4;
  head pg_catalog.text;
  body pg_catalog.text;
  parsed pg_catalog.jsonb;
BEGIN
  IF pg_catalog.right(tail, 6) OPERATOR(pg_catalog.<>) 'Bemi*/' THEN
    RETURN '';
  END IF;
  -- The last /*Bemi of the query: found from its end, as "imeB*/" in the reversed query.
  opening := pg_catalog.strpos(pg_catalog.reverse(tail), 'imeB*/');
  IF opening OPERATOR(pg_catalog.<) 7 THEN  -- /*Bemi*/
    RAISE WARNING 'bemi: ignoring a /*Bemi ... Bemi*/ comment that is not JSON: '
      USING ERRCODE = 'invalid_text_representation';
    RETURN '';
  END IF;
  head := pg_catalog.left(tail, pg_catalog.length(tail) OPERATOR(pg_catalog.-) opening OPERATOR(pg_catalog.-) 5);
  -- Outside string literals, quoted names and block comments, the query before the comment
  -- holds no ; (one statement), and its last line no -- (the comment would be in a line comment).
  IF pg_catalog.strpos(head, ';') OPERATOR(pg_catalog.>) 0
     OR pg_catalog.strpos(pg_catalog.split_part(head, E'\n', -1), '--') OPERATOR(pg_catalog.>) 0 THEN
    head := pg_catalog.regexp_replace(head,
      $re$[eE]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*'|"(?:[^"]|"")*"|/\*[^*]*\*+(?:[^/*][^*]*\*+)*/$re$, '', 'g');
    IF pg_catalog.strpos(head, ';') OPERATOR(pg_catalog.>) 0
       OR pg_catalog.strpos(pg_catalog.split_part(head, E'\n', -1), '--') OPERATOR(pg_catalog.>) 0 THEN
      RETURN '';
    END IF;
  END IF;
  body := pg_catalog.btrim(pg_catalog.substr(tail, pg_catalog.length(head) OPERATOR(pg_catalog.+) 7,
    opening OPERATOR(pg_catalog.-) 7), E' \t\r\n');
  IF body OPERATOR(pg_catalog.=) emitted AND body OPERATOR(pg_catalog.<>) '' THEN
    RETURN body;
  END IF;
  IF pg_catalog.octet_length(body) OPERATOR(pg_catalog.>) limit_bytes THEN
    RAISE WARNING 'bemi: ignoring a /*Bemi ... Bemi*/ comment over the limit of % bytes', limit_bytes
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Keep contexts small, or raise the setting bemi.max_context_bytes.';
    RETURN '';
  END IF;
  BEGIN
    parsed := body::pg_catalog.jsonb;
  EXCEPTION WHEN data_exception THEN
    RAISE WARNING 'bemi: ignoring a /*Bemi ... Bemi*/ comment that is not JSON: %', pg_catalog.left(body, 200)
      USING ERRCODE = 'invalid_text_representation';
    RETURN '';
  END;
  IF pg_catalog.jsonb_typeof(parsed) OPERATOR(pg_catalog.<>) 'object' THEN
    RAISE WARNING 'bemi: ignoring a /*Bemi ... Bemi*/ comment that is a JSON %, not an object', pg_catalog.jsonb_typeof(parsed)
      USING ERRCODE = 'invalid_parameter_value';
    RETURN '';
  END IF;
  -- The same context written differently (spacing, key order) is the same context.
  RETURN CASE WHEN parsed OPERATOR(pg_catalog.=) '{}' THEN ''
    WHEN emitted OPERATOR(pg_catalog.<>) '' AND parsed OPERATOR(pg_catalog.=) emitted::pg_catalog.jsonb THEN emitted
    ELSE body END;
END
$$;

CREATE FUNCTION bemi.statement_text(query_string text) RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
  prepared pg_catalog.text := pg_catalog.substring(query_string, '^\s*(?:[eE][xX][eE][cC][uU][tT][eE])\s+("(?:[^"]|"")+"|[^\s(;"]+)\s*(?:\([^;]*\))?\s*;?\s*$');
BEGIN
  IF prepared IS NULL THEN
    RETURN query_string;
  END IF;
  RETURN coalesce((SELECT p.statement FROM pg_catalog.pg_prepared_statements p
                   WHERE p.name OPERATOR(pg_catalog.=) (pg_catalog.parse_ident(prepared))[1]), query_string);
END
$$;

CREATE OR REPLACE FUNCTION bemi.context_trigger() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
  mark pg_catalog.text := bemi.transaction_mark();
  marked pg_catalog.bool := pg_catalog.current_setting('bemi.mark', true) OPERATOR(pg_catalog.=) mark;
  pending pg_catalog.text := CASE WHEN marked THEN pg_catalog.current_setting('bemi.context', true) ELSE '' END;
  emitted pg_catalog.text := CASE WHEN marked THEN pg_catalog.current_setting('bemi.emitted', true) ELSE '' END;
  query pg_catalog.text;
  written pg_catalog.pg_lsn;
BEGIN
  IF pending OPERATOR(pg_catalog.=) '' THEN
    query := pg_catalog.current_query();
    IF pg_catalog.strpos(query, '/*Bemi') OPERATOR(pg_catalog.=) 0
       AND pg_catalog.upper(pg_catalog.left(pg_catalog.ltrim(query), 7)) OPERATOR(pg_catalog.=) 'EXECUTE' THEN
      query := bemi.statement_text(query);
    END IF;
    IF pg_catalog.strpos(query, '/*Bemi') OPERATOR(pg_catalog.>) 0 THEN
      pending := bemi.comment_context(query, emitted);
    END IF;
  END IF;
  -- Operators are qualified: this runs with the writer's search_path (docs/security.md).
  IF pending OPERATOR(pg_catalog.<>) emitted THEN
    written := pg_catalog.pg_logical_emit_message(true, 'bemi',
      CASE WHEN pending OPERATOR(pg_catalog.=) '' THEN '{}' ELSE pending END);
    query := pg_catalog.set_config('bemi.emitted', pending, true);
    IF marked IS NOT TRUE THEN
      query := pg_catalog.set_config('bemi.context', '', true);
      query := pg_catalog.set_config('bemi.mark', mark, true);
    END IF;
  END IF;
  RETURN NULL;
END
$$;


-- The context trigger fires in replica mode too.
DO $$
DECLARE
  member regclass;
BEGIN
  FOR member IN SELECT t.tgrelid::regclass FROM pg_catalog.pg_trigger t
                WHERE t.tgname = 'bemi_context' AND t.tgfoid = 'bemi.context_trigger()'::pg_catalog.regprocedure LOOP
    EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER bemi_context', member);
  END LOOP;
END
$$;

-- Decoding: exact commit times, hostile messages kept as marked contexts, pinned settings.
CREATE OR REPLACE FUNCTION bemi.time_at(message bytea, at integer) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN '2000-01-01 00:00:00+00'::timestamptz
  + (bemi.int_at(message, at, 8) / 1000000) * interval '1 second'
  + (bemi.int_at(message, at, 8) % 1000000) * interval '1 microsecond';

CREATE FUNCTION bemi.message_text(content bytea) RETURNS text
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN pg_catalog.convert_from(content, pg_catalog.getdatabaseencoding());
EXCEPTION WHEN character_not_in_repertoire OR untranslatable_character THEN
  RETURN content::text;
END
$$;

CREATE OR REPLACE FUNCTION bemi.stage_from_slot(max_changes integer)
RETURNS TABLE (seq bigint, lsn pg_lsn, xid xid, data jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET timezone = 'UTC' SET lc_monetary = 'C' SET client_encoding = 'UTF8'
AS $$
DECLARE
  -- pgoutput sends names and values in the client encoding, UTF8 here (an SQL_ASCII database
  -- sends its bytes as they are, which no conversion could make valid).
  encoding name := CASE WHEN pg_catalog.getdatabaseencoding() = 'SQL_ASCII' THEN 'SQL_ASCII' ELSE 'UTF8' END;
  message record;
  m bytea;
  kind "char";
  at integer;
  len integer;
  ends integer;
  relations jsonb := '{}';
  shapes integer := 0;
  relation integer;
  columns text[];
  types oid[];
  typmods integer[];
  identity boolean[];
  relation_name text[];
  ncolumns integer;
  tuple_kind "char";
  old_values text[];
  new_values text[];
  missing integer[];
  key_only boolean;
  xact_id bigint;
  commit_time timestamptz;
  context text;
  last_position pg_lsn;
  ordinal integer := 0;
  i integer;
  relids integer;
BEGIN
  seq := 0;
  FOR message IN
    SELECT w.lsn, w.xid, w.data FROM pg_catalog.pg_logical_slot_peek_binary_changes(bemi.slot_name(), NULL, max_changes,
      'proto_version', '1', 'publication_names', 'bemi', 'messages', 'true') AS w
  LOOP
    m := message.data;
    kind := pg_catalog.chr(pg_catalog.get_byte(m, 0));
    seq := seq + 1;
    IF kind = 'B' THEN
      commit_time := bemi.time_at(m, 9);
      xact_id := bemi.int_at(m, 17, 4);
      context := NULL;
      lsn := message.lsn; xid := message.xid;
      data := pg_catalog.jsonb_build_object('action', 'B', 'xid', xact_id);
      RETURN NEXT;
    ELSIF kind = 'C' THEN
      lsn := message.lsn; xid := message.xid;
      data := pg_catalog.jsonb_build_object('action', 'C', 'xid', xact_id, 'timestamp', bemi.time_at(m, 18));
      RETURN NEXT;
    ELSIF kind = 'M' THEN
      -- flags (1 = transactional), lsn, prefix, content: only transactional bemi messages count.
      ends := pg_catalog.position(pg_catalog.substr(m, 11), '\x00'::bytea) + 10;
      IF pg_catalog.get_byte(m, 1) = 1 AND pg_catalog.substr(m, 11, ends - 11) = '\x62656d69'::bytea THEN
        context := bemi.message_text(pg_catalog.substr(m, ends + 5, bemi.int_at(m, ends, 4)::integer));
        lsn := message.lsn; xid := message.xid;
        data := pg_catalog.jsonb_build_object('action', 'M', 'transactional', true, 'prefix', 'bemi', 'content', context);
        RETURN NEXT;
      END IF;
    ELSIF kind = 'R' THEN
      -- relid, namespace, name, replica identity, then per column: flags, name, type, typmod.
      at := 5;
      relation_name := '{}';
      FOR i IN 1..2 LOOP
        ends := pg_catalog.position(pg_catalog.substr(m, at + 1), '\x00'::bytea) + at - 1;
        relation_name := relation_name || pg_catalog.convert_from(pg_catalog.substr(m, at + 1, ends - at), encoding);
        at := ends + 1;
      END LOOP;
      ncolumns := bemi.int_at(m, at + 1, 2)::integer;
      at := at + 3;
      columns := '{}'; types := '{}'; typmods := '{}'; identity := '{}';
      FOR i IN 1..ncolumns LOOP
        identity := identity || (pg_catalog.get_byte(m, at) & 1 = 1);
        ends := pg_catalog.position(pg_catalog.substr(m, at + 2), '\x00'::bytea) + at;
        columns := columns || pg_catalog.convert_from(pg_catalog.substr(m, at + 2, ends - at - 1), encoding);
        types := types || bemi.int_at(m, ends + 1, 4)::oid;
        typmods := typmods || bemi.int_at(m, ends + 5, 4)::bit(32)::integer;
        at := ends + 9;
      END LOOP;
      shapes := shapes + 1;
      INSERT INTO bemi.staged_relations (relation, relid, schema, "table", columns, types, typmods, identity)
      VALUES (shapes, bemi.int_at(m, 1, 4)::oid, relation_name[1], relation_name[2], columns, types, typmods, identity);
      relations := relations || pg_catalog.jsonb_build_object(bemi.int_at(m, 1, 4)::text, shapes);
    ELSIF kind IN ('I', 'U', 'D') THEN
      relation := (relations ->> bemi.int_at(m, 1, 4)::text)::integer;
      at := 5;
      old_values := NULL; new_values := NULL; missing := NULL; key_only := false;
      LOOP
        -- a tuple: its kind (K old key, O old row, N new row), then per column n, u or t + text.
        tuple_kind := pg_catalog.chr(pg_catalog.get_byte(m, at));
        ncolumns := bemi.int_at(m, at + 1, 2)::integer;
        at := at + 3;
        IF tuple_kind = 'N' THEN new_values := pg_catalog.array_fill(NULL::text, ARRAY[ncolumns]);
        ELSE old_values := pg_catalog.array_fill(NULL::text, ARRAY[ncolumns]); key_only := tuple_kind = 'K';
        END IF;
        FOR i IN 1..ncolumns LOOP
          CASE pg_catalog.get_byte(m, at)
            WHEN 116 THEN -- 't'
              len := (pg_catalog.get_byte(m, at + 1) << 24) + (pg_catalog.get_byte(m, at + 2) << 16)
                   + (pg_catalog.get_byte(m, at + 3) << 8) + pg_catalog.get_byte(m, at + 4);
              IF tuple_kind = 'N' THEN
                new_values[i] := pg_catalog.convert_from(pg_catalog.substr(m, at + 6, len), encoding);
              ELSE
                old_values[i] := pg_catalog.convert_from(pg_catalog.substr(m, at + 6, len), encoding);
              END IF;
              at := at + 5 + len;
            WHEN 117 THEN -- 'u': an unchanged TOASTed value, known only from a whole old row
              IF old_values IS NOT NULL AND NOT key_only THEN
                new_values[i] := old_values[i];
              ELSIF tuple_kind = 'N' THEN
                missing := coalesce(missing, '{}') || i;
              END IF;
              at := at + 1;
            ELSE -- 'n'
              at := at + 1;
          END CASE;
        END LOOP;
        EXIT WHEN tuple_kind = 'N' OR kind = 'D';
      END LOOP;
      -- An UPDATE that did not change the key of a table without REPLICA IDENTITY FULL logs no
      -- old row: its key, from the new row, is all that is known of it.
      IF kind = 'U' AND old_values IS NULL THEN
        old_values := new_values; key_only := true;
      END IF;
      IF message.lsn IS DISTINCT FROM last_position THEN ordinal := 0; last_position := message.lsn; END IF;
      ordinal := ordinal + 1;
      INSERT INTO bemi.staged (seq, relation, operation, position, ordinal, transaction_id, committed_at, context,
                               old_values, old_key_only, new_values, new_missing)
      VALUES (seq, relation, kind, message.lsn, ordinal, xact_id, commit_time, context,
              old_values, key_only, new_values, missing);
    ELSIF kind = 'T' THEN
      -- number of relations, options, then their OIDs.
      relids := bemi.int_at(m, 1, 4)::integer;
      IF message.lsn IS DISTINCT FROM last_position THEN ordinal := 0; last_position := message.lsn; END IF;
      FOR i IN 0..relids - 1 LOOP
        ordinal := ordinal + 1;
        INSERT INTO bemi.staged (seq, relation, operation, position, ordinal, transaction_id, committed_at, context)
        VALUES (seq, (relations ->> bemi.int_at(m, 6 + 4 * i, 4)::text)::integer, 'T', message.lsn, ordinal,
                xact_id, commit_time, context);
        seq := seq + 1;
      END LOOP;
    END IF;
    -- 'Y' (type) and 'O' (origin) messages carry nothing the trail needs.
  END LOOP;
END
$$;


-- Storing: values read by built-in code only, with pinned settings.
CREATE FUNCTION bemi.read_type(type oid, typmod integer) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  t pg_catalog.pg_type;
  element text;
BEGIN
  SELECT * INTO t FROM pg_catalog.pg_type WHERE oid = type;
  IF NOT FOUND THEN
    RETURN 'text';
  ELSIF type < 16384 THEN  -- FirstNormalObjectId: made by initdb
    RETURN pg_catalog.format_type(type, typmod);
  ELSIF t.typtype = 'd' THEN
    RETURN bemi.read_type(t.typbasetype, CASE WHEN t.typtypmod <> -1 THEN t.typtypmod ELSE typmod END);
  ELSIF t.typtype IN ('e', 'r', 'm') THEN
    RETURN 'text';
  ELSIF t.typelem <> 0 AND t.typlen = -1 THEN
    element := bemi.read_type(t.typelem, typmod);
    RETURN CASE WHEN element = pg_catalog.format_type(t.typelem, typmod) THEN pg_catalog.format_type(type, typmod)
      ELSE element || '[]' END;
  ELSIF EXISTS (SELECT FROM pg_catalog.pg_cast c
                WHERE c.castsource = type AND c.casttarget IN ('json'::regtype, 'jsonb'::regtype))
     OR EXISTS (SELECT FROM pg_catalog.pg_attribute a
                WHERE a.attrelid = t.typrelid AND t.typrelid <> 0 AND a.attnum > 0 AND NOT a.attisdropped
                  AND bemi.read_type(a.atttypid, a.atttypmod) <> pg_catalog.format_type(a.atttypid, a.atttypmod)) THEN
    RETURN 'text';
  END IF;
  RETURN pg_catalog.format_type(type, typmod);
END
$$;

CREATE OR REPLACE FUNCTION bemi.column_type(type oid, typmod integer, source_name text DEFAULT NULL) RETURNS text
LANGUAGE sql STABLE
RETURN CASE
  WHEN source_name IS NULL THEN bemi.read_type(type, typmod)
  WHEN pg_catalog.to_regtype(source_name) IS NULL THEN CASE WHEN source_name LIKE '%[]' THEN 'text[]' ELSE 'text' END
  WHEN bemi.read_type(pg_catalog.to_regtype(source_name), -1) = pg_catalog.format_type(pg_catalog.to_regtype(source_name), -1)
    THEN source_name
  ELSE bemi.read_type(pg_catalog.to_regtype(source_name), -1) END;

CREATE OR REPLACE FUNCTION bemi.image_sql(columns text[], types oid[], typmods integer[], type_names text[], vals text, masked text[])
RETURNS text
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT coalesce(pg_catalog.string_agg(chunk.sql, ' || ' ORDER BY chunk.n), '''{}''::jsonb')
  FROM (
    SELECT (c.i - 1) / 50 AS n,
      'pg_catalog.jsonb_build_object(' || pg_catalog.string_agg(
        CASE WHEN columns[c.i] = ANY (masked) THEN pg_catalog.format('%L, %L::text', columns[c.i], '[masked]')
          WHEN bemi.column_type(types[c.i], typmods[c.i], type_names[c.i]) LIKE '%[]'
            THEN pg_catalog.format('%1$L, CASE WHEN pg_catalog.left((%2$s)[%3$s], 1) = ''['' THEN pg_catalog.to_jsonb((%2$s)[%3$s]) '
              'ELSE pg_catalog.to_jsonb((%2$s)[%3$s]::%4$s) END', columns[c.i], vals, c.i,
              bemi.column_type(types[c.i], typmods[c.i], type_names[c.i]))
          ELSE pg_catalog.format('%L, (%s)[%s]::%s', columns[c.i], vals, c.i,
            bemi.column_type(types[c.i], typmods[c.i], type_names[c.i])) END,
        ', ' ORDER BY c.i) || ')' AS sql
    FROM pg_catalog.generate_subscripts(columns, 1) AS c(i)
    GROUP BY 1
  ) AS chunk;
END;

CREATE OR REPLACE FUNCTION bemi.peek(max_changes integer DEFAULT NULL)
RETURNS TABLE (lsn pg_lsn, xid xid, data jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET timezone = 'UTC'
SET array_nulls = on SET xmloption = content SET lc_monetary = 'C'
AS $$
DECLARE
  queries text;
  entries jsonb;
  result jsonb;
  as_text boolean;
BEGIN
  SELECT pg_catalog.jsonb_agg(pg_catalog.to_jsonb(e)) INTO entries FROM bemi.stage_from_slot(max_changes) AS e;
  -- Values that cannot be converted are shown as text, as bemi.store would store them.
  FOREACH as_text IN ARRAY ARRAY[false, true] LOOP
    SELECT pg_catalog.string_agg(bemi.convert_sql(x, 'true', as_text), ' UNION ALL ') INTO queries FROM bemi.staged_relations x;
    BEGIN
      EXECUTE pg_catalog.format($q$
    SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('lsn', e.lsn, 'xid', e.xid, 'data', e.data) ORDER BY e.seq, e.sub) FROM (
      SELECT e.seq, 0 AS sub, e.lsn, e.xid, e.data
      FROM pg_catalog.jsonb_to_recordset($2) AS e(seq bigint, lsn pg_lsn, xid xid, data jsonb)
      UNION ALL
      SELECT c.seq, c.ordinal, c.position, c.transaction_id::text::xid,
        pg_catalog.jsonb_build_object('action', s.operation, 'schema', c.schema, 'table', c."table")
        || CASE WHEN c.operation IN ('CREATE', 'UPDATE') THEN pg_catalog.jsonb_build_object('columns',
             (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('name', k.name, 'type', bemi.column_type(k.type, k.typmod),
                'value', c.after -> k.name) ORDER BY k.n)
              FROM ROWS FROM (pg_catalog.unnest(r.columns), pg_catalog.unnest(r.types), pg_catalog.unnest(r.typmods)) WITH ORDINALITY AS k(name, type, typmod, n)
              WHERE c.after ? k.name)) ELSE '{}' END
        || CASE WHEN c.before <> '{}' THEN pg_catalog.jsonb_build_object('identity',
             (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('name', k.name, 'type', bemi.column_type(k.type, k.typmod),
                'value', c.before -> k.name) ORDER BY k.n)
              FROM ROWS FROM (pg_catalog.unnest(r.columns), pg_catalog.unnest(r.types), pg_catalog.unnest(r.typmods)) WITH ORDINALITY AS k(name, type, typmod, n)
              WHERE c.before ? k.name)) ELSE '{}' END
        || coalesce((SELECT pg_catalog.jsonb_build_object('pk', p.pk) FROM bemi.primary_key(r.relid::pg_catalog.regclass) AS p(pk)
             WHERE p.pk IS NOT NULL), '{}')
      FROM (%s) AS c JOIN bemi.staged s ON s.seq = c.seq AND s.ordinal = c.ordinal
      JOIN bemi.staged_relations r ON r.relation = s.relation
    ) AS e
    $q$, coalesce(queries, 'SELECT NULL::bigint AS seq, NULL::text AS schema, NULL::text AS "table", NULL::text AS operation, '
      'NULL::jsonb AS before, NULL::jsonb AS after, NULL::bigint AS transaction_id, NULL::pg_lsn AS position, '
      'NULL::integer AS ordinal WHERE false')) INTO result USING bemi.staged_contexts(), entries, NULL::text, NULL::text;
      EXIT;
    EXCEPTION WHEN OTHERS THEN
      IF as_text THEN
        RAISE;
      END IF;
    END;
  END LOOP;
  DELETE FROM bemi.staged;
  DELETE FROM bemi.staged_relations;
  RETURN QUERY SELECT e.lsn, e.xid, e.data FROM pg_catalog.jsonb_to_recordset(result) AS e(lsn pg_lsn, xid xid, data jsonb);
END
$$;


-- Time travel: what anyone may ask, and what only readers of the trail may.
CREATE OR REPLACE FUNCTION bemi.ingested_until(slot name DEFAULT bemi.slot_name()) RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
  SELECT greatest(p.caught_up_at, p.committed_at) FROM bemi.progress p WHERE p.slot_name = ingested_until.slot;
END;

CREATE OR REPLACE FUNCTION bemi.retained_from() RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
  SELECT r.retained_from FROM bemi.retention r;
END;

CREATE OR REPLACE FUNCTION bemi.check_trail(history jsonb, at timestamptz) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  named text := pg_catalog.quote_ident(history ->> 'schema') || '.' || pg_catalog.quote_ident(history ->> 'table');
  until timestamptz := bemi.ingested_until((history ->> 'slot')::name);
BEGIN
  IF history IS NULL OR at IS NULL THEN
    RAISE EXCEPTION 'bemi: the history and the moment must not be NULL' USING ERRCODE = 'invalid_parameter_value';
  ELSIF at < bemi.retained_from() THEN
    RAISE EXCEPTION 'bemi: the trail holds no changes before % (older partitions were dropped by bemi.retain)', bemi.retained_from()
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Ask for a moment at or after bemi.retained_from(), or put the archived partitions back with bemi-pg restore-archive.';
  END IF;
  IF (history ->> 'first_schema', history ->> 'first_table') <> (history ->> 'schema', history ->> 'table')
     AND EXISTS (SELECT FROM bemi.changes AS x WHERE x.schema = history ->> 'first_schema' AND x."table" = history ->> 'first_table'
                 AND (NOT history ? 'database' OR x.database = history ->> 'database')) THEN
    RAISE EXCEPTION 'bemi: % was renamed since tracking began: its changes before are under %.%', named,
        pg_catalog.quote_ident(history ->> 'first_schema'), pg_catalog.quote_ident(history ->> 'first_table')
      USING ERRCODE = 'feature_not_supported', HINT = 'Time travel does not follow renames; query bemi.changes under both names.';
  END IF;
  IF until IS NULL OR at > until THEN
    RAISE EXCEPTION 'bemi: the trail is not ingested up to %: it holds every commit up to %', at, coalesce(until::text, 'none yet')
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Wait for bemi-pg worker or run SELECT bemi.ingest(), then ask again.';
  END IF;
  RETURN true;
END
$$;

REVOKE ALL ON FUNCTION bemi.ingested_until(name), bemi.retained_from() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bemi.ingested_until(name), bemi.retained_from(), bemi.check_trail(jsonb, timestamptz) TO PUBLIC;

-- ---------------------------------------------------------------------------------------
-- The worker as a service (issue 19): bemi.describe_relation runs as the extension's owner,
-- so the role of a worker storing into a trail database needs only EXECUTE on it in the
-- source (docs/trail-database.md), not SELECT on bemi.tracking and bemi.keys.

ALTER FUNCTION bemi.describe_relation(oid, oid[], integer[], pg_lsn) SECURITY DEFINER;
