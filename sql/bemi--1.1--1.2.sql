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
-- 6. Column rules hold whoever stores and whenever: masked columns stay masked after a rename
--    and for changes still pending at untrack; an update of a masked column alone is stored
--    (their tables and bemi.column_rules come first: the functions below use them).
-- 7. The trail knows what it covers (docs/time-travel.md): bemi.gaps and bemi.coverage record
--    what capture missed; bemi.ingested_until() is exact (bemi.wal_mark); time travel refuses
--    moments a gap or a pending write makes uncertain; revert refuses part-stored transactions;
--    the slot is a failover slot from 17 on.

------------------------------------------------------------------------------------------
-- 6. Column rules (first: bemi.track and bemi.store below use them).
------------------------------------------------------------------------------------------

ALTER TABLE bemi.tracking ADD COLUMN mask_attnums smallint[] NOT NULL DEFAULT '{}';
COMMENT ON COLUMN bemi.tracking.mask_attnums IS 'The masked columns by number: masked under their names now too, when renamed.';
UPDATE bemi.tracking t SET mask_attnums = ARRAY(SELECT a.attnum FROM pg_catalog.pg_attribute a
  WHERE a.attrelid = t.relation AND a.attname::text = ANY (t.mask_columns) AND NOT a.attisdropped ORDER BY a.attnum);

CREATE TABLE bemi.untracked (
  relation oid PRIMARY KEY,
  ignore_columns text[] NOT NULL,
  mask_columns text[] NOT NULL,
  mask_attnums smallint[] NOT NULL,
  untracked_at pg_lsn NOT NULL
);

COMMENT ON TABLE bemi.untracked IS
  'The column rules of tables untracked while their changes may still be pending, until ingest has gone past untracked_at.';
SELECT pg_catalog.pg_extension_config_dump('bemi.untracked', '');
REVOKE ALL ON bemi.untracked FROM PUBLIC;

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


CREATE OR REPLACE FUNCTION bemi.untrack(relation regclass) RETURNS void
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

CREATE OR REPLACE FUNCTION bemi.describe_relation(relid oid, types oid[], typmods integer[], at pg_lsn,
  OUT type_names text[], OUT key_columns text[], OUT ignore_columns text[], OUT mask_columns text[])
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
  SELECT ARRAY(SELECT bemi.portable_type(x.type, x.typmod)
               FROM ROWS FROM (pg_catalog.unnest(types), pg_catalog.unnest(typmods)) WITH ORDINALITY AS x(type, typmod, n)
               ORDER BY x.n),
    bemi.key_columns_at(relid, at), r.ignore_columns, r.mask_columns
  FROM bemi.column_rules(relid) AS r;
END;

CREATE OR REPLACE FUNCTION bemi.convert_sql(r bemi.staged_relations, row_filter text DEFAULT 'true', as_text boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  -- The rules of this database's table, or those its source sent (a trail database).
  ignore_columns text[] := CASE WHEN r.mask_columns IS NULL
    THEN (SELECT x.ignore_columns FROM bemi.column_rules(r.relid) AS x) ELSE r.ignore_columns END;
  masked text[] := ARRAY(SELECT c FROM pg_catalog.unnest(CASE WHEN r.mask_columns IS NULL
    THEN (SELECT x.mask_columns FROM bemi.column_rules(r.relid) AS x) ELSE r.mask_columns END) AS c WHERE c = ANY (r.columns));
  -- The key as of the relation's first staged change: a new key comes with a new Relation message.
  keys text[] := CASE WHEN r.mask_columns IS NULL
    THEN bemi.key_columns_at(r.relid, (SELECT pg_catalog.min(s.position) FROM bemi.staged s WHERE s.relation = r.relation))
    ELSE r.key_columns END;
  masks text := pg_catalog.format('pg_catalog.jsonb_object(%L::text[], %L::text[])', masked,
    pg_catalog.array_fill('[masked]'::text, ARRAY[pg_catalog.cardinality(masked)]));
  old_image text := CASE WHEN as_text THEN 'pg_catalog.jsonb_object(r.columns, s.old_values) || ' || masks
    ELSE bemi.image_sql(r.columns, r.types, r.typmods, r.type_names, 's.old_values', masked) END;
  new_image text := CASE WHEN as_text THEN 'pg_catalog.jsonb_object(r.columns, s.new_values) || ' || masks
    ELSE bemi.image_sql(r.columns, r.types, r.typmods, r.type_names, 's.new_values', masked) END;
  -- An UPDATE that changed only ignored columns is not stored. Compared as the values were
  -- written, before masking: a change of a masked column alone is a change.
  ignored text := CASE WHEN ignore_columns <> '{}' THEN pg_catalog.format(
    'NOT (s.operation = ''U'' AND NOT s.old_key_only AND s.new_missing IS NULL '
    'AND pg_catalog.jsonb_object(r.columns, s.old_values) - %1$L::text[] = pg_catalog.jsonb_object(r.columns, s.new_values) - %1$L::text[])',
    ignore_columns) ELSE 'true' END;
  -- Columns whose type is gone since (dropped with changes pending): their values are kept as text, marked.
  gone text := (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(r.columns[i]), ', ' ORDER BY i)
    FROM pg_catalog.generate_subscripts(r.columns, 1) AS i
    WHERE CASE WHEN r.type_names IS NULL THEN NOT EXISTS (SELECT FROM pg_catalog.pg_type t WHERE t.oid = r.types[i])
      ELSE r.type_names[i] IS NULL END);
  problem text := CASE WHEN as_text THEN ''
    WHEN gone IS NOT NULL THEN 'bemi: the type of ' || gone || ' no longer exists: stored as text' END;
BEGIN
  RETURN pg_catalog.format($q$
    SELECT s.seq, $4::text AS database, r.schema, r."table", CASE s.operation WHEN 'D' THEN %5$s WHEN 'T' THEN NULL ELSE %6$s END AS primary_key,
      CASE s.operation WHEN 'I' THEN 'CREATE' WHEN 'U' THEN 'UPDATE' WHEN 'D' THEN 'DELETE' ELSE 'TRUNCATE' END AS operation,
      coalesce(i.before, '{}') AS before, coalesce(i.after, '{}') AS after,
      coalesce($1 -> s.context, '{}') AS context, s.committed_at, s.transaction_id, s.position, s.ordinal,
      %3$L::text AS problem, s.old_key_only OR s.new_missing IS NOT NULL AS partial,
      CASE WHEN s.operation = 'U' AND %5$s IS DISTINCT FROM %6$s THEN %5$s END AS previous_key
    FROM bemi.staged s JOIN bemi.staged_relations r ON r.relation = s.relation
    CROSS JOIN LATERAL (SELECT
      CASE WHEN s.old_values IS NULL THEN NULL WHEN s.old_key_only
        THEN (%1$s) - (SELECT pg_catalog.array_agg(c) FROM ROWS FROM (pg_catalog.unnest(r.columns), pg_catalog.unnest(r.identity)) AS k(c, key) WHERE NOT k.key)
        ELSE %1$s END AS before,
      CASE WHEN s.new_values IS NULL AND s.new_missing IS NULL THEN NULL WHEN s.new_missing IS NOT NULL
        THEN (%2$s) - (SELECT pg_catalog.array_agg(r.columns[m]) FROM pg_catalog.unnest(s.new_missing) AS m)
        ELSE %2$s END AS after
      OFFSET 0 -- kept a subquery: each image is built once, not at every use
    ) AS i
    WHERE s.relation = %4$s AND %7$s AND %8$s
    $q$, old_image, new_image, problem, r.relation,
    bemi.primary_key_sql(keys, 'i.before'), bemi.primary_key_sql(keys, 'i.after'),
    row_filter, ignored);
END
$$;


------------------------------------------------------------------------------------------
-- 1. The publication.
------------------------------------------------------------------------------------------

-- The publication is the set of tables the slot decodes; partitions report as their root.
-- Publications never belong to an extension: pg_dump keeps it, with its tables, like any
-- publication. So the install makes it (below) except in a restore, where the dump brings its
-- own (docs/backup.md), and bemi.track and bemi.create_slot make it when it is missing. One
-- left by an earlier install is used as it is, but from PostgreSQL 18 on it publishes stored
-- generated columns (see the end: PostgreSQL versions).
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
END
$$;


CREATE OR REPLACE FUNCTION bemi.create_slot() RETURNS pg_lsn
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  slot name := bemi.slot_name();
  start pg_lsn;
  started timestamptz;
  lost record;
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = slot) THEN
    RAISE EXCEPTION 'bemi: the slot "%" already exists', slot
      USING ERRCODE = 'duplicate_object',
            HINT = 'Changes are being captured already. To start over: SELECT bemi.drop_slot(); SELECT bemi.create_slot();';
  END IF;
  -- First, before this transaction writes anything (a slot cannot be created after writes).
  -- From 17 on a failover slot: synchronized to a standby, it survives a promotion (docs/ingest.md).
  IF pg_catalog.current_setting('server_version_num')::integer >= 170000 THEN
    EXECUTE 'SELECT s.lsn FROM pg_catalog.pg_create_logical_replication_slot($1, ''pgoutput'', false, false, true) AS s'
      INTO start USING slot;
  ELSE
    SELECT s.lsn INTO start FROM pg_catalog.pg_create_logical_replication_slot(slot, 'pgoutput') AS s;
  END IF;
  -- Every transaction that commits from now on is decoded (the slot is consistent).
  started := pg_catalog.clock_timestamp();
  -- The coverage record: a progress row without its slot means the slot was lost (a failover
  -- before 17, an invalidation, a drop by hand): what it had not stored is a gap. Tables
  -- tracked before the first slot lost their writes up to now. An open gap ends here.
  SELECT p.lsn, p.caught_up_at INTO lost FROM bemi.progress p WHERE p.slot_name = slot;
  IF bemi.close_gaps(slot, start, started) = 0 THEN
    IF lost.lsn IS NOT NULL THEN
      PERFORM bemi.open_gap(slot, 'slot lost', NULL, lost.lsn, lost.caught_up_at, start, started,
        'the slot disappeared while the trail was complete only up to here: a failover, an invalidation or a drop by hand');
    ELSIF EXISTS (SELECT FROM bemi.tracking) THEN
      PERFORM bemi.open_gap(slot, 'tracked before the slot', NULL, NULL, (SELECT pg_catalog.min(t.tracked_at) FROM bemi.tracking t),
        start, started, 'tables were tracked before the slot existed: their writes up to here were not captured');
    END IF;
  END IF;
  INSERT INTO bemi.progress (slot_name, lsn) VALUES (slot, start)
  ON CONFLICT (slot_name) DO UPDATE SET lsn = excluded.lsn, ingested_at = excluded.ingested_at,
    committed_at = NULL, caught_up_at = NULL, part_of = NULL, part_stored = 0, part_transaction = NULL;
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
  -- Monitoring (bemi-pg status): the changes with a problem, counted without reading the rest.
  EXECUTE pg_catalog.format('CREATE INDEX ON %s (id) WHERE problem IS NOT NULL', partition);
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
  part_xid bigint;
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
  IF part_of IS NOT NULL THEN
    SELECT s.transaction_id INTO part_xid FROM bemi.staged s ORDER BY s.seq DESC LIMIT 1;
  END IF;
  DELETE FROM bemi.staged;
  DELETE FROM bemi.staged_relations;
  DELETE FROM bemi.untracked u WHERE u.untracked_at <= through;
  -- (A trail database gets its source's progress row with the first batch it stores.)
  -- A transaction stored in parts is the last one staged; which one it is, for revert.
  INSERT INTO bemi.progress AS p (slot_name, lsn, part_of, part_stored, part_transaction, committed_at, caught_up_at, stored)
  VALUES (coalesce(source_slot, bemi.slot_name()), through, store.part_of, store.part_stored,
    part_xid,
    newest, store.caught_up_at, inserted)
  ON CONFLICT (slot_name) DO UPDATE SET lsn = greatest(p.lsn, excluded.lsn), part_of = excluded.part_of,
    part_stored = excluded.part_stored,
    part_transaction = CASE WHEN excluded.part_of IS NULL THEN NULL ELSE coalesce(excluded.part_transaction, p.part_transaction) END,
    committed_at = greatest(p.committed_at, excluded.committed_at),
    caught_up_at = greatest(excluded.caught_up_at, p.caught_up_at), ingested_at = pg_catalog.now(), stored = excluded.stored;
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
  PERFORM bemi.check_stored(changes, ids);
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
CREATE FUNCTION bemi.transaction_mark() RETURNS text
LANGUAGE sql STABLE
RETURN pg_catalog.encode(pg_catalog.timestamptz_send(pg_catalog.now()), 'hex');

CREATE FUNCTION bemi.marked(setting text) RETURNS text
LANGUAGE sql STABLE
RETURN CASE WHEN pg_catalog.starts_with(setting, bemi.transaction_mark()) THEN pg_catalog.substr(setting, 17) ELSE '' END;

CREATE OR REPLACE FUNCTION bemi.set_context(context jsonb) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
  body pg_catalog.text := context::pg_catalog.text;
  setting pg_catalog.text := pg_catalog.current_setting('bemi.max_context_bytes', true);
  limit_bytes pg_catalog.int4 := CASE WHEN setting OPERATOR(pg_catalog.<>) '' THEN setting::pg_catalog.int4 ELSE 65536 END;
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
  -- NULL and an empty object are no context at all. An assignment, not PERFORM: PL/pgSQL
  -- evaluates it as a simple expression, without running a query.
  body := pg_catalog.substr(pg_catalog.set_config('bemi.context', bemi.transaction_mark() OPERATOR(pg_catalog.||)
    CASE WHEN body IS NULL OR body OPERATOR(pg_catalog.=) '{}' THEN '' ELSE body END, true), 17);
  setting := bemi.marked(pg_catalog.current_setting('bemi.emitted', true));
  IF setting OPERATOR(pg_catalog.<>) '' AND setting OPERATOR(pg_catalog.<>) body THEN
    written := pg_catalog.pg_logical_emit_message(true, 'bemi', CASE WHEN body OPERATOR(pg_catalog.=) '' THEN '{}' ELSE body END);
    setting := pg_catalog.set_config('bemi.emitted', bemi.transaction_mark() OPERATOR(pg_catalog.||) body, true);
  END IF;
END
$$;

CREATE OR REPLACE FUNCTION bemi.context() RETURNS jsonb
LANGUAGE sql STABLE
RETURN NULLIF(bemi.marked(pg_catalog.current_setting('bemi.context', true)), '')::pg_catalog.jsonb;

CREATE OR REPLACE FUNCTION bemi.comment_context(query text, emitted text) RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
  setting pg_catalog.text := pg_catalog.current_setting('bemi.max_context_bytes', true);
  limit_bytes pg_catalog.int4 := CASE WHEN setting OPERATOR(pg_catalog.<>) '' THEN setting::pg_catalog.int4 ELSE 65536 END;
  tail pg_catalog.text;
  opening pg_catalog.int4;
  head pg_catalog.text;
  body pg_catalog.text;
  parsed pg_catalog.jsonb;
BEGIN
  IF pg_catalog.strpos(query, '/*Bemi') OPERATOR(pg_catalog.=) 0 THEN
    query := bemi.statement_text(query);
  END IF;
  tail := pg_catalog.rtrim(query, E' \t\r\n;');
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
SET search_path = pg_catalog, pg_temp
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
  pending pg_catalog.text := bemi.marked(pg_catalog.current_setting('bemi.context', true));
  emitted pg_catalog.text := bemi.marked(pg_catalog.current_setting('bemi.emitted', true));
  query pg_catalog.text;
  written pg_catalog.pg_lsn;
BEGIN
  IF pending OPERATOR(pg_catalog.=) '' THEN
    query := pg_catalog.current_query();
    -- A comment, or EXECUTE of a statement prepared with PREPARE (starting with e, E or a blank).
    IF pg_catalog.strpos(query, '/*Bemi') OPERATOR(pg_catalog.>) 0
       OR pg_catalog.strpos(E'Ee \t\n', pg_catalog.left(query, 1)) OPERATOR(pg_catalog.>) 0 THEN
      pending := bemi.comment_context(query, emitted);
    END IF;
  END IF;
  -- Operators are qualified: this runs with the writer's search_path (docs/security.md).
  IF pending OPERATOR(pg_catalog.<>) emitted THEN
    written := pg_catalog.pg_logical_emit_message(true, 'bemi',
      CASE WHEN pending OPERATOR(pg_catalog.=) '' THEN '{}' ELSE pending END);
    query := pg_catalog.set_config('bemi.emitted', bemi.transaction_mark() OPERATOR(pg_catalog.||) pending, true);
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
  -- pgoutput sends names and values in the client encoding: UTF8 here, except in an SQL_ASCII
  -- database, whose bytes go as they are (no conversion could make them valid).
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
  -- Sent as UTF8, an SQL_ASCII database's bytes would first be checked as UTF8, and the first
  -- value that is not would stop ingest. (The SET clause restores client_encoding on return.)
  IF encoding = 'SQL_ASCII' THEN
    PERFORM pg_catalog.set_config('client_encoding', 'SQL_ASCII', true);
  END IF;
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
  -- PostgreSQL 14's pgoutput sends the begin and commit of every transaction, of those that
  -- changed no published table too (15 and later skip them): such a pair is nothing pending.
  RETURN QUERY SELECT e.lsn, e.xid, e.data
  FROM ROWS FROM (pg_catalog.jsonb_to_recordset(result) AS (lsn pg_lsn, xid xid, data jsonb)) WITH ORDINALITY AS e(lsn, xid, data, n)
  WHERE e.data ->> 'action' NOT IN ('B', 'C') OR e.xid IN (
    SELECT o.xid FROM pg_catalog.jsonb_to_recordset(result) AS o(xid xid, data jsonb) WHERE o.data ->> 'action' NOT IN ('B', 'C'))
  ORDER BY e.n;
END
$$;


-- Time travel: what anyone may ask, and what only readers of the trail may.
CREATE OR REPLACE FUNCTION bemi.ingested_until(slot name DEFAULT bemi.slot_name()) RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
  SELECT p.caught_up_at FROM bemi.progress p WHERE p.slot_name = ingested_until.slot;
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
  covered timestamptz;
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
  -- A gap after the moment: the table now, less the changes after the moment, is not the table
  -- then (the changes in the gap are missing), nor is a row's last change before it.
  covered := greatest((history ->> 'covered_from')::timestamptz,
    bemi.covered_from((history ->> 'slot')::name, NULL, history ->> 'schema', history ->> 'table'));
  IF at <= covered THEN
    RAISE EXCEPTION 'bemi: the trail of % may lack changes after %: it is complete only after %', named, at,
        CASE WHEN covered = 'infinity' THEN 'a gap that is still open' ELSE covered::text END
      USING ERRCODE = 'ZB001',
            DETAIL = 'A gap in capture (a slot dropped, lost or created after tracking began, tracking paused, a trail moved or split) lies after that moment.',
            HINT = 'SELECT * FROM bemi.coverage shows the gaps; ask for a moment after the last one.';
  END IF;
  RETURN true;
END
$$;

REVOKE ALL ON FUNCTION bemi.ingested_until(name), bemi.retained_from() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bemi.ingested_until(name), bemi.retained_from(), bemi.check_trail(jsonb, timestamptz) TO PUBLIC;

------------------------------------------------------------------------------------------
-- PostgreSQL versions (issue 18): on 18, stored generated columns are published (in the trail,
-- and tracked tables with them can be updated again); tables with virtual generated columns
-- (18) are refused by bemi.track, skipped by bemi.track_new_tables and refused by the ALTER
-- TABLE event trigger; so is a replica identity other than FULL on a tracked table.
------------------------------------------------------------------------------------------

-- A table's virtual generated columns (PostgreSQL 18), which bemi cannot track.
CREATE FUNCTION bemi.virtual_columns(relation regclass) RETURNS text
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
  FROM pg_catalog.pg_attribute a
  WHERE a.attrelid = relation AND a.attgenerated = 'v' AND a.attnum > 0 AND NOT a.attisdropped;
END;

-- The ALTER TABLE event trigger refuses a replica identity other than FULL and virtual generated
-- columns on a tracked table.
CREATE OR REPLACE FUNCTION bemi.remember_keys() RETURNS event_trigger
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

-- New tables with virtual generated columns are skipped, with a warning.
CREATE OR REPLACE FUNCTION bemi.track_new_tables() RETURNS event_trigger
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

REVOKE ALL ON FUNCTION bemi.virtual_columns(regclass) FROM PUBLIC;

-- On 18: the publication gets publish_generated_columns = stored (bemi.create_publication), and
-- tracked tables PostgreSQL will not let be updated while tracked are named.
DO $$
DECLARE
  refused text;
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_publication p WHERE p.pubname = 'bemi') THEN
    PERFORM bemi.create_publication();
  END IF;
  SELECT pg_catalog.string_agg(t.relation::text, ', ' ORDER BY t.relation::text) INTO refused
  FROM bemi.tracking t WHERE bemi.virtual_columns(t.relation) IS NOT NULL;
  IF refused IS NOT NULL THEN
    RAISE WARNING 'bemi: tracked tables with virtual generated columns fail on UPDATE and DELETE: %', refused
      USING HINT = 'Untrack them (SELECT bemi.untrack(...)), or make the columns STORED.';
  END IF;
END
$$;


------------------------------------------------------------------------------------------
-- Operations (issue 19): bemi.track_all leaves unlogged tables out with a NOTICE; the
-- partial index of changes with a problem (bemi.index_partition, above) that bemi-pg
-- status counts them with.
------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION bemi.track_all(schema_name name DEFAULT 'public', auto boolean DEFAULT NULL) RETURNS SETOF regclass
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

-- bemi.uninstall: a kept trail in the way is moved aside by renaming its schema (renaming the
-- table alone makes the next uninstall fail).
CREATE OR REPLACE FUNCTION bemi.uninstall(drop_trail boolean DEFAULT false) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  as_extension boolean := EXISTS (SELECT FROM pg_catalog.pg_extension e WHERE e.extname = 'bemi');
  reader integer;
  relation regclass;
  sequence regclass;
  tied text;
  trigger_name name;
  slot name;
BEGIN
  SELECT s.active_pid INTO reader FROM pg_catalog.pg_replication_slots s
  WHERE s.database = pg_catalog.current_database() AND s.slot_name IN (bemi.slot_name(), 'bemi') AND s.active;
  IF reader IS NOT NULL THEN
    RAISE EXCEPTION 'bemi: process % is reading the slot of this database', reader
      USING ERRCODE = 'object_in_use', HINT = 'Stop bemi-pg worker (and any bemi.ingest() schedule) first.';
  END IF;
  IF NOT drop_trail AND pg_catalog.to_regclass('bemi_trail.changes') IS NOT NULL THEN
    RAISE EXCEPTION 'bemi: bemi_trail.changes exists already (the trail an earlier uninstall kept)'
      USING ERRCODE = 'duplicate_table',
            HINT = 'Rename its schema first (ALTER SCHEMA bemi_trail RENAME TO bemi_trail_before), or pass drop_trail => true.';
  END IF;

  DELETE FROM bemi.auto_tracked;
  FOR relation IN SELECT DISTINCT t.root FROM bemi.tracking t JOIN pg_catalog.pg_class c ON c.oid = t.root LOOP
    PERFORM bemi.untrack(relation);
  END LOOP;
  -- Context triggers bemi.tracking does not know of (copied by hand, or left by 1.0).
  FOR relation, trigger_name IN
    SELECT t.tgrelid, t.tgname FROM pg_catalog.pg_trigger t
    WHERE t.tgfoid = 'bemi.context_trigger()'::pg_catalog.regprocedure
  LOOP
    EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', trigger_name, relation);
  END LOOP;
  -- DROP EXTENSION would leave the publication: publications never belong to an extension.
  IF EXISTS (SELECT FROM pg_catalog.pg_publication p WHERE p.pubname = 'bemi') THEN
    DROP PUBLICATION bemi;
  END IF;

  IF NOT drop_trail THEN
    IF pg_catalog.to_regnamespace('bemi_trail') IS NULL THEN
      CREATE SCHEMA bemi_trail;
    END IF;
    -- The trail and, if it is partitioned, its partitions, parent first.
    FOR relation IN
      SELECT p.relid FROM (SELECT 'bemi.changes'::pg_catalog.regclass AS relid, 0 AS level
                           UNION ALL
                           SELECT t.relid, t.level FROM pg_catalog.pg_partition_tree('bemi.changes') t WHERE t.level > 0) p
      JOIN pg_catalog.pg_class c ON c.oid = p.relid
      WHERE c.relnamespace = 'bemi'::pg_catalog.regnamespace ORDER BY p.level
    LOOP
      -- Indexes, constraints and defaults that call bemi's functions serve bemi alone and
      -- would tie the kept trail to the extension: they go.
      FOR tied IN
        SELECT pg_catalog.format('DROP INDEX %s', i.indexrelid::pg_catalog.regclass)
        FROM pg_catalog.pg_index i
        JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = i.indexrelid
        JOIN pg_catalog.pg_proc f ON d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND f.oid = d.refobjid
        WHERE i.indrelid = relation AND f.pronamespace = 'bemi'::pg_catalog.regnamespace
        UNION
        SELECT pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', relation, co.conname)
        FROM pg_catalog.pg_constraint co
        JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND d.objid = co.oid
        JOIN pg_catalog.pg_proc f ON d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND f.oid = d.refobjid
        WHERE co.conrelid = relation AND f.pronamespace = 'bemi'::pg_catalog.regnamespace
        UNION
        SELECT pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT', relation, a.attname)
        FROM pg_catalog.pg_attrdef ad
        JOIN pg_catalog.pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
        JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND d.objid = ad.oid
        JOIN pg_catalog.pg_proc f ON d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND f.oid = d.refobjid
        WHERE ad.adrelid = relation AND f.pronamespace = 'bemi'::pg_catalog.regnamespace
      LOOP
        EXECUTE tied;
      END LOOP;
      -- Partitions made after CREATE EXTENSION (by ingest) are no members.
      IF as_extension AND EXISTS (SELECT FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                                  AND e.objid = relation AND e.deptype = 'e') THEN
        EXECUTE pg_catalog.format('ALTER EXTENSION bemi DROP TABLE %s', relation);
        -- Its identity sequence is a member too.
        FOR sequence IN
          SELECT d.objid FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
          JOIN pg_catalog.pg_depend e ON e.classid = d.classid AND e.objid = d.objid AND e.deptype = 'e'
          WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = relation AND d.deptype IN ('a', 'i')
        LOOP
          EXECUTE pg_catalog.format('ALTER EXTENSION bemi DROP SEQUENCE %s', sequence);
        END LOOP;
      END IF;
      EXECUTE pg_catalog.format('ALTER TABLE %s SET SCHEMA bemi_trail', relation);
    END LOOP;
    EXECUTE pg_catalog.format('COMMENT ON TABLE bemi_trail.changes IS %L', pg_catalog.format(
      'The audit trail bemi recorded, kept by bemi.uninstall() at %s.', pg_catalog.now()));
  END IF;

  FOR slot IN SELECT s.slot_name FROM pg_catalog.pg_replication_slots s
    WHERE s.database = pg_catalog.current_database() AND s.slot_name IN (bemi.slot_name(), 'bemi')
  LOOP
    PERFORM pg_catalog.pg_drop_replication_slot(slot);
  END LOOP;
  DELETE FROM bemi.progress;
  RETURN CASE WHEN drop_trail THEN 'the trail is dropped with bemi'
    ELSE 'the trail is kept in bemi_trail.changes' END;
END
$$;

------------------------------------------------------------------------------------------
-- 6. The trail knows what it covers: the coverage record and the checks that refuse.
------------------------------------------------------------------------------------------

ALTER TABLE bemi.progress ADD COLUMN part_transaction bigint;
COMMENT ON COLUMN bemi.progress.part_transaction IS 'The transaction id of the transaction stored in parts (part_of).';

-- The coverage record: every span of the WAL (and of commit time) whose changes the trail may
-- not hold, with its cause. The trail holds a table completely after the end of its last gap
-- (bemi.coverage, section 8); time travel refuses moments before it. relation NULL: every
-- table of the slot. An open gap (to_at NULL) lasts until capture resumes.
CREATE TABLE bemi.gaps (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  slot_name name NOT NULL,
  relation oid,
  schema text,
  "table" text,
  cause text NOT NULL CHECK (cause IN ('tracked before the slot', 'slot dropped', 'slot lost', 'trail split',
                                       'trail moved', 'tracking paused')),
  from_lsn pg_lsn,
  from_at timestamptz,
  to_lsn pg_lsn,
  to_at timestamptz,
  detail text,
  noted_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);

COMMENT ON TABLE bemi.gaps IS
  'Spans whose changes the trail may not hold, with their cause: from the last position and commit time known stored to where capture resumed (NULL: not yet).';
COMMENT ON COLUMN bemi.gaps.relation IS 'The table the gap is of (its schema and table names then), or NULL: every table of the slot.';
SELECT pg_catalog.pg_extension_config_dump('bemi.gaps', '');
SELECT pg_catalog.pg_extension_config_dump('bemi.gaps_id_seq', '');

-- Records a gap that begins where the trail is complete (or at a given start) and lasts until
-- a capture resumes (bemi.close_gaps) unless it ends at to_lsn. Returns its id.
CREATE FUNCTION bemi.open_gap(slot name, cause text, relation oid DEFAULT NULL, from_lsn pg_lsn DEFAULT NULL,
  from_at timestamptz DEFAULT NULL, to_lsn pg_lsn DEFAULT NULL, to_at timestamptz DEFAULT NULL, detail text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
BEGIN ATOMIC
  INSERT INTO bemi.gaps (slot_name, relation, schema, "table", cause, from_lsn, from_at, to_lsn, to_at, detail)
  SELECT open_gap.slot, open_gap.relation, n.nspname, c.relname, open_gap.cause,
    coalesce(open_gap.from_lsn, p.lsn), coalesce(open_gap.from_at, p.caught_up_at), open_gap.to_lsn, open_gap.to_at, open_gap.detail
  FROM (SELECT) AS one
  LEFT JOIN bemi.progress p ON p.slot_name = open_gap.slot
  LEFT JOIN pg_catalog.pg_class c ON c.oid = open_gap.relation
  LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  RETURNING id;
END;

-- Ends the open gaps of a slot (of one table, or of the slot as a whole) where capture resumed.
CREATE FUNCTION bemi.close_gaps(slot name, to_lsn pg_lsn, to_at timestamptz, relation oid DEFAULT NULL) RETURNS bigint
LANGUAGE sql
BEGIN ATOMIC
  WITH closed AS (
    UPDATE bemi.gaps g SET to_lsn = close_gaps.to_lsn, to_at = close_gaps.to_at
    WHERE g.slot_name = close_gaps.slot AND g.to_at IS NULL AND g.relation IS NOT DISTINCT FROM close_gaps.relation
    RETURNING g.id)
  SELECT pg_catalog.count(*) FROM closed;
END;

-- For the worker, where it stores (here, or a trail database): what it finds before it
-- streams. The slot is gone (to_lsn NULL: a gap that stays open until capture resumes), or
-- the slot confirmed past what this trail holds (another trail, a worker storing elsewhere, a
-- synced slot ahead of its standby's trail): the span between is a gap; one left open ends here.
-- SECURITY DEFINER: the worker's role may record gaps, not write bemi.gaps.
CREATE FUNCTION bemi.note_gap(slot name, cause text, from_lsn pg_lsn, to_lsn pg_lsn, detail text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF cause IS NULL OR cause NOT IN ('slot lost', 'trail split', 'trail moved') THEN
    RAISE EXCEPTION 'bemi: a worker records a gap as slot lost, trail split or trail moved, not %', coalesce(cause, 'NULL')
      USING ERRCODE = 'invalid_parameter_value';
  ELSIF to_lsn IS NULL THEN
    IF EXISTS (SELECT FROM bemi.gaps g WHERE g.slot_name = note_gap.slot AND g.relation IS NULL AND g.to_at IS NULL) THEN
      RETURN NULL;
    END IF;
    RETURN bemi.open_gap(slot, cause, NULL, from_lsn, NULL, NULL, NULL, detail);
  ELSIF bemi.close_gaps(slot, to_lsn, pg_catalog.clock_timestamp()) > 0 THEN
    RETURN NULL;
  END IF;
  RETURN bemi.open_gap(slot, cause, NULL, from_lsn, NULL, to_lsn, pg_catalog.clock_timestamp(), detail);
END
$$;

-- What the trail of a slot does not cover, for bemi-pg status and monitoring: every gap (open
-- ones first), and a transaction stored only in part. Cheap: it reads two small tables.
-- SECURITY DEFINER: a monitoring role may call it without reading the trail.
CREATE FUNCTION bemi.coverage_report(slot name DEFAULT bemi.slot_name())
RETURNS TABLE (cause text, schema text, "table" text, from_lsn pg_lsn, from_at timestamptz, to_lsn pg_lsn, to_at timestamptz,
  open boolean, detail text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
  SELECT r.cause, r.schema, r."table", r.from_lsn, r.from_at, r.to_lsn, r.to_at, r.open, r.detail FROM (
    SELECT g.cause, g.schema, g."table", g.from_lsn, g.from_at, g.to_lsn, g.to_at, g.to_at IS NULL AS open, g.detail, g.id
    FROM bemi.gaps g WHERE g.slot_name = coverage_report.slot
    UNION ALL
    SELECT 'transaction stored in part', NULL, NULL, p.lsn, p.caught_up_at, p.part_of, NULL, true,
      pg_catalog.format('transaction %s: %s of its changes stored; the rest is stored when ingest goes on', p.part_transaction, p.part_stored),
      NULL
    FROM bemi.progress p WHERE p.slot_name = coverage_report.slot AND p.part_of IS NOT NULL
  ) AS r
  ORDER BY r.open DESC, r.from_lsn, r.id;
END;

COMMENT ON FUNCTION bemi.coverage_report(name) IS
  'The gaps in the trail of a slot (open ones first) and a transaction stored only in part: what bemi-pg status reports.';

-- Per tracked table: from when on the trail holds it completely (after its last gap; NULL:
-- from the start of tracking), up to when (bemi.ingested_until), and its gaps.
CREATE VIEW bemi.coverage AS
SELECT t.relation::pg_catalog.regclass AS relation, t.schema, t."table", t.tracked_at,
  g.last_gap_end AS covered_from, g.last_gap_end_lsn AS covered_from_lsn,
  p.caught_up_at AS covered_until, p.lsn AS covered_until_lsn, p.part_of AS part_stored_commit_lsn,
  coalesce(g.gaps, '[]') AS gaps
FROM bemi.tracking t
LEFT JOIN bemi.progress p ON p.slot_name = bemi.slot_name()
LEFT JOIN LATERAL (
  SELECT pg_catalog.max(coalesce(x.to_at, 'infinity')) AS last_gap_end,
    (pg_catalog.array_agg(x.to_lsn ORDER BY coalesce(x.to_at, 'infinity') DESC))[1] AS last_gap_end_lsn,
    pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('cause', x.cause, 'from_lsn', x.from_lsn, 'from_at', x.from_at,
      'to_lsn', x.to_lsn, 'to_at', x.to_at, 'detail', x.detail) ORDER BY x.id) AS gaps
  FROM bemi.gaps x WHERE x.slot_name = bemi.slot_name() AND (x.relation IS NULL OR x.relation = t.relation)
) AS g ON true
WHERE t.relation = t.root;

COMMENT ON VIEW bemi.coverage IS
  'Per tracked table: the span the trail holds completely (covered_from, exclusive, to covered_until) and the gaps before it.';

CREATE OR REPLACE FUNCTION bemi.drop_slot() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM pg_catalog.pg_drop_replication_slot(bemi.slot_name());
  -- What the slot held and the trail did not is lost: a gap until the next create_slot.
  IF EXISTS (SELECT FROM bemi.progress p WHERE p.slot_name = bemi.slot_name())
     AND NOT EXISTS (SELECT FROM bemi.gaps g WHERE g.slot_name = bemi.slot_name() AND g.relation IS NULL AND g.to_at IS NULL) THEN
    PERFORM bemi.open_gap(bemi.slot_name(), 'slot dropped', NULL, NULL, NULL, NULL, NULL,
      'bemi.drop_slot(): writes after the trail''s last complete commit are not captured until bemi.create_slot()');
  END IF;
  DELETE FROM bemi.progress p WHERE p.slot_name = bemi.slot_name();
END
$$;


COMMENT ON FUNCTION bemi.drop_slot() IS 'Drops this database''s logical slot; WAL not yet stored is no longer kept (a gap in bemi.gaps until bemi.create_slot()).';

CREATE OR REPLACE FUNCTION bemi.untrack(relation regclass) RETURNS void
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


-- A moment and a WAL position such that every transaction committed at or before the moment
-- has its commit record before the position: what makes "the trail is complete up to this
-- time" true once everything before the position is stored (bemi.progress.caught_up_at). A
-- transaction takes its commit time just before it writes its commit record, so the time is
-- read first, then the transactions running at that time are let finish, then the position
-- is read. One idle in a transaction block is not committing and does not count. at is NULL
-- when one is still running after a short wait (ask again later).
-- SECURITY DEFINER: it sees every session's locks and state, and tells only a time and a position.
CREATE FUNCTION bemi.wal_mark(OUT at timestamptz, OUT lsn pg_lsn)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  running xid[];
  tries integer := 0;
BEGIN
  at := pg_catalog.clock_timestamp();
  PERFORM pg_catalog.pg_stat_clear_snapshot();  -- sessions as they are now, not as this transaction first saw them
  -- Every transaction with an id holds the lock of its id until it has ended (only those of
  -- this database write its tables); a prepared transaction (no process) commits only
  -- through COMMIT PREPARED, run by a session below.
  running := ARRAY(SELECT l.transactionid FROM pg_catalog.pg_locks l
                   JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid AND a.datname = pg_catalog.current_database()
                   WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
                     AND l.pid <> pg_catalog.pg_backend_pid());
  LOOP
    PERFORM pg_catalog.pg_stat_clear_snapshot();
    running := ARRAY(SELECT x FROM pg_catalog.unnest(running) AS x
                     WHERE EXISTS (SELECT FROM pg_catalog.pg_locks l WHERE l.locktype = 'transactionid' AND l.transactionid = x
                                   AND l.mode = 'ExclusiveLock' AND l.granted)
                       AND NOT EXISTS (SELECT FROM pg_catalog.pg_stat_activity a
                                       WHERE a.backend_xid = x AND a.state IN ('idle in transaction', 'idle in transaction (aborted)')));
    EXIT WHEN pg_catalog.cardinality(running) = 0
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_stat_activity a
                      WHERE a.state = 'active' AND a.query ~* '^\s*(commit|rollback)\s+prepared');
    tries := tries + 1;
    IF tries > 40 THEN
      at := NULL;
      RETURN;
    END IF;
    PERFORM pg_catalog.pg_sleep(0.005);
  END LOOP;
  lsn := pg_catalog.pg_current_wal_insert_lsn();
END
$$;

COMMENT ON FUNCTION bemi.wal_mark() IS
  'A time and a WAL position: every transaction committed at or before the time ends before the position (at NULL: try again).';

-- Waits until every commit before a position (a wal_mark, or the WAL position of a question)
-- is flushed, so that a reader of the slot, which reads only flushed WAL, sees it: until the
-- flush position passes it, or at most as long as PostgreSQL takes to flush an asynchronous
-- commit (three wal_writer_delay; a synchronous one is flushed before it is visible). Other
-- WAL records (running transactions, hint bits) may stay unflushed for long while the server
-- is idle, so the position itself need not be reached.
CREATE FUNCTION bemi.flushed_past(lsn pg_lsn) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  deadline timestamptz := pg_catalog.clock_timestamp()
    + 3 * pg_catalog.current_setting('wal_writer_delay')::interval + interval '100 ms';
BEGIN
  WHILE pg_catalog.pg_current_wal_flush_lsn() < lsn AND pg_catalog.clock_timestamp() < deadline LOOP
    PERFORM pg_catalog.pg_sleep(0.005);
  END LOOP;
END
$$;

-- The slot of this database, checked: it exists and can still be read. Its confirmed position.
CREATE FUNCTION bemi.check_slot(slot name) RETURNS pg_lsn
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  state record;
BEGIN
  SELECT s.confirmed_flush_lsn, s.wal_status INTO state FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = slot;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'bemi: the replication slot "%" does not exist in database "%"', slot, pg_catalog.current_database()
      USING ERRCODE = 'undefined_object',
            HINT = 'Create it with SELECT bemi.create_slot(); changes made before are not captured (the span is recorded in bemi.gaps).';
  ELSIF state.wal_status = 'lost' THEN
    RAISE EXCEPTION 'bemi: the replication slot "%" was invalidated: the WAL it needed is gone', slot
      USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'SELECT bemi.drop_slot(); SELECT bemi.create_slot(); the span between is recorded in bemi.gaps (raise max_slot_wal_keep_size).';
  END IF;
  RETURN state.confirmed_flush_lsn;
END
$$;

CREATE OR REPLACE FUNCTION bemi.ingest(max_changes integer DEFAULT 10000) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET timezone = 'UTC'
AS $$
DECLARE
  slot name := bemi.slot_name();
  slot_at pg_lsn;
  done pg_lsn;
  through pg_lsn;
  mark record;
  flushed pg_lsn;
  read bigint;
  newest_id bigint;
  moved bigint := 0;
BEGIN
  IF max_changes IS NULL OR max_changes < 1 THEN
    RAISE EXCEPTION 'bemi: max_changes must be a positive number, not %', coalesce(max_changes::text, 'NULL')
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  -- One ingest at a time; a second one waits here, then carries on after the first.
  PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('bemi.ingest'));
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = slot) AND EXISTS (
    SELECT FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = 'bemi' AND s.database = pg_catalog.current_database()) THEN
    -- After ALTER EXTENSION bemi UPDATE from 1.0: move to the 1.1 slot (before any write here).
    SELECT pg_catalog.max(c.id) INTO newest_id FROM bemi.changes c;
    PERFORM bemi.create_slot();
    SELECT pg_catalog.count(*) INTO moved FROM bemi.changes c WHERE c.id > coalesce(newest_id, 0);
  END IF;
  slot_at := bemi.check_slot(slot);
  -- How far this ingest may claim the trail complete: every commit up to mark.at ends before
  -- mark.lsn; once those are flushed, the peek below reads them.
  mark := bemi.wal_mark();
  IF mark.at IS NOT NULL THEN
    PERFORM bemi.flushed_past(mark.lsn);
  END IF;
  flushed := pg_catalog.pg_current_wal_flush_lsn();
  -- The slot moves only up to what an earlier, committed ingest stored. Moving it is not
  -- undone by a rollback, so not up to what an ingest earlier in this transaction stored.
  SELECT p.lsn INTO done FROM bemi.progress p WHERE p.slot_name = slot;
  IF done > slot_at AND coalesce(pg_catalog.current_setting('bemi.ingested', true), '') = '' THEN
    PERFORM pg_catalog.pg_replication_slot_advance(slot, done);
  END IF;
  SELECT pg_catalog.max(e.lsn) FILTER (WHERE e.data ->> 'action' = 'C'), pg_catalog.max(e.seq)
  INTO through, read FROM bemi.stage_from_slot(max_changes) AS e;
  PERFORM pg_catalog.set_config('bemi.ingested', 'on', true);
  -- A peek brings whole transactions, and only those with changes of tracked tables. When it
  -- brought fewer messages than asked for, it read all the WAL flushed before it began: the
  -- slot may then move that far, past the WAL of other tables, and the trail is complete up
  -- to the mark (its commits end before what was flushed).
  IF coalesce(read, 0) < max_changes THEN
    RETURN moved + bemi.store(greatest(through, flushed, done), NULL, 0, mark.at);
  END IF;
  RETURN moved + bemi.store(greatest(through, done));
END
$$;


-- The relations a pgoutput change message is of (Insert, Update, Delete: one; Truncate: its list).
CREATE FUNCTION bemi.message_relids(message bytea) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE pg_catalog.get_byte(message, 0)
  WHEN 73 THEN ARRAY[bemi.int_at(message, 1, 4)] WHEN 85 THEN ARRAY[bemi.int_at(message, 1, 4)]
  WHEN 68 THEN ARRAY[bemi.int_at(message, 1, 4)]
  WHEN 84 THEN ARRAY(SELECT bemi.int_at(message, 6 + 4 * i, 4)
                     FROM pg_catalog.generate_series(0, bemi.int_at(message, 1, 4)::integer - 1) AS i)
  ELSE '{}' END;

-- Whether a table (or a partition or child of it) has writes that are committed and visible
-- now but not in the trail: the slot holds a transaction that changed it and committed past
-- what the trail stored (a transaction stored in parts counts). Read from the slot without
-- consuming it; while a worker streams from the slot, from a temporary copy of it. NULL when
-- it cannot be told: more pending than max_changes, or the WAL could not be flushed.
-- The answer holds for the caller's snapshot: it is kept for the rest of the statement
-- (transaction-local setting bemi.pending, keyed by the snapshot).
-- SECURITY DEFINER: it reads the slot for callers that may not, and tells them only a yes or no.
CREATE FUNCTION bemi.pending_writes(relation regclass, max_changes integer DEFAULT 100000) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  slot name := bemi.slot_name();
  copy name := pg_catalog.format('bemi_check_%s', pg_catalog.pg_backend_pid());
  key text := pg_catalog.format('%s/%s/', relation::oid, pg_catalog.pg_current_snapshot());
  cached text := coalesce(pg_catalog.current_setting('bemi.pending', true), '');
  upto pg_lsn := pg_catalog.pg_current_wal_insert_lsn();
  stored pg_lsn;
  relids bigint[] := ARRAY(SELECT m::oid::bigint FROM bemi.members(relation) AS m);
  peeked bigint;
  touched boolean;
BEGIN
  IF pg_catalog.starts_with(cached, key) THEN
    RETURN nullif(pg_catalog.substr(cached, pg_catalog.length(key) + 1), '')::boolean;
  END IF;
  SELECT greatest(p.lsn, s.confirmed_flush_lsn) INTO stored
  FROM pg_catalog.pg_replication_slots s LEFT JOIN bemi.progress p ON p.slot_name = s.slot_name WHERE s.slot_name = slot;
  IF stored IS NULL THEN
    RETURN NULL;  -- no slot: nothing is captured (the coverage record has the gap)
  END IF;
  -- What an earlier, committed ingest stored need not be read again: move the slot there, as
  -- the next bemi.ingest() would (not after an ingest in this transaction: a rollback would
  -- not move it back). An active slot is the worker's, which confirms as it stores.
  IF coalesce(pg_catalog.current_setting('bemi.ingested', true), '') = '' AND EXISTS (
    SELECT FROM pg_catalog.pg_replication_slots s JOIN bemi.progress p ON p.slot_name = s.slot_name
    WHERE s.slot_name = slot AND NOT s.active AND p.lsn > s.confirmed_flush_lsn) THEN
    BEGIN
      PERFORM pg_catalog.pg_replication_slot_advance(slot, (SELECT p.lsn FROM bemi.progress p WHERE p.slot_name = slot));
    EXCEPTION WHEN object_in_use THEN
      NULL;  -- taken meanwhile: read it as it is
    END;
  END IF;
  PERFORM bemi.flushed_past(upto);  -- every commit the caller sees is readable
  FOR attempt IN 1..2 LOOP
    BEGIN
      IF attempt = 2 THEN  -- the slot is in use: read a copy of it, dropped after
        IF EXISTS (SELECT FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = copy) THEN
          PERFORM pg_catalog.pg_drop_replication_slot(copy);
        END IF;
        PERFORM pg_catalog.pg_copy_logical_replication_slot(slot, copy, true);
      END IF;
      SELECT coalesce(pg_catalog.sum(t.n), 0), coalesce(pg_catalog.bool_or(t.touches AND t.commit_end > stored), false)
      INTO peeked, touched
      FROM (SELECT pg_catalog.max(w.lsn) FILTER (WHERE pg_catalog.get_byte(w.data, 0) = 67) AS commit_end,
              pg_catalog.bool_or(bemi.message_relids(w.data) && relids) AS touches, pg_catalog.count(*) AS n
            FROM pg_catalog.pg_logical_slot_peek_binary_changes(CASE attempt WHEN 1 THEN slot ELSE copy END, upto, max_changes,
              'proto_version', '1', 'publication_names', 'bemi', 'messages', 'false') AS w
            GROUP BY w.xid) AS t;
      IF attempt = 2 THEN
        PERFORM pg_catalog.pg_drop_replication_slot(copy);
      END IF;
      EXIT;
    EXCEPTION
      WHEN object_in_use THEN
        IF attempt = 2 THEN
          RAISE;
        END IF;
      WHEN active_sql_transaction THEN  -- no copy after this transaction wrote: cannot tell
        EXIT;
    END;
  END LOOP;
  IF touched OR peeked < max_changes THEN
    PERFORM pg_catalog.set_config('bemi.pending', key || touched::text, true);
    RETURN touched;
  END IF;
  PERFORM pg_catalog.set_config('bemi.pending', key, true);
  RETURN NULL;
END
$$;

-- The last moment the trail may lack changes of a table at (the end of its last gap, infinity
-- while a gap is open; NULL: no gap): time travel answers only for later moments. Gaps of
-- the slot, and of the table by its identity (where the table is) or by its names.
CREATE FUNCTION bemi.covered_from(slot name, relation oid, schema_name text, table_name text) RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
  SELECT pg_catalog.max(coalesce(g.to_at, 'infinity')) FROM bemi.gaps g
  WHERE g.slot_name = covered_from.slot
    AND (g.relation IS NULL OR g.relation = covered_from.relation
         OR (covered_from.relation IS NULL AND (g.schema, g."table") = (schema_name, table_name)));
END;

CREATE OR REPLACE FUNCTION bemi.history_of(relation regclass, at timestamptz) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  began timestamptz;
  first_schema text;
  first_table text;
  now_schema text;
  now_table text;
BEGIN
  IF at IS NULL OR relation IS NULL THEN
    RAISE EXCEPTION 'bemi: the table and the moment must not be NULL' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  SELECT t.tracked_at, t.schema, t."table" INTO began, first_schema, first_table
  FROM bemi.tracking AS t WHERE t.relation = history_of.relation;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'bemi: % is not tracked, so it has no history', relation
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Track it with SELECT bemi.track(''table'').';
  ELSIF at < began THEN
    RAISE EXCEPTION 'bemi: % was not tracked yet at %: tracking began at %', relation, at, began
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Ask for a moment at or after the start of tracking.';
  END IF;
  SELECT n.nspname, c.relname INTO now_schema, now_table
  FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace WHERE c.oid = relation;
  -- What only this database knows, for check_trail: the end of the table's last gap.
  RETURN pg_catalog.jsonb_build_object('schema', now_schema, 'table', now_table,
    'first_schema', first_schema, 'first_table', first_table, 'slot', bemi.slot_name(),
    'covered_from', bemi.covered_from(bemi.slot_name(), relation, NULL, NULL));
END
$$;

CREATE OR REPLACE FUNCTION bemi.check_stored(changes regclass, ids bigint[]) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  partial bigint[];
BEGIN
  IF changes = 'bemi.changes'::pg_catalog.regclass THEN
    SELECT pg_catalog.array_agg(x.id ORDER BY x.id) INTO partial
    FROM bemi.changes AS x JOIN bemi.progress AS p ON p.part_transaction = x.transaction_id
      AND x.committed_at > coalesce(p.caught_up_at, '-infinity')
    WHERE x.id = ANY (ids);
  END IF;
  IF partial IS NOT NULL THEN
    RAISE EXCEPTION 'bemi: changes % are of a transaction stored only in part', partial
      USING ERRCODE = 'ZB002',
            DETAIL = 'The worker stopped in the middle of a large transaction; the rest of it is not in the trail yet.',
            HINT = 'Let bemi-pg worker (or SELECT bemi.ingest()) store the rest of it, then revert.';
  END IF;
  RETURN true;
END
$$;


REVOKE ALL ON bemi.progress, bemi.gaps, bemi.coverage FROM PUBLIC;
REVOKE ALL ON FUNCTION bemi.open_gap(name, text, oid, pg_lsn, timestamptz, pg_lsn, timestamptz, text),
  bemi.close_gaps(name, pg_lsn, timestamptz, oid), bemi.coverage_report(name), bemi.note_gap(name, text, pg_lsn, pg_lsn, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION bemi.wal_mark(), bemi.flushed_past(pg_lsn), bemi.check_slot(name) FROM PUBLIC;
-- A time and a WAL position are no secret: any worker role may take a mark.
GRANT EXECUTE ON FUNCTION bemi.wal_mark() TO PUBLIC;
CREATE FUNCTION bemi.check_pending(relation regclass) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  pending boolean := bemi.pending_writes(relation);
BEGIN
  IF pending IS DISTINCT FROM false THEN
    RAISE EXCEPTION 'bemi: % has writes that are not in the trail yet%', relation,
        CASE WHEN pending IS NULL THEN ' (or too many pending changes to tell)' ELSE '' END
      USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'Wait for bemi-pg worker or run SELECT bemi.ingest(), then ask again.';
  END IF;
  RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION bemi.row_from(relation regclass, primary_key text, at timestamptz, event jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  keys text[] := bemi.key_columns(relation);
  result jsonb;
BEGIN
  IF primary_key IS NULL THEN
    RAISE EXCEPTION 'bemi: the primary key must not be NULL' USING ERRCODE = 'invalid_parameter_value';
  ELSIF keys IS NULL THEN
    RAISE EXCEPTION 'bemi: % has no primary key, so its rows cannot be named', relation
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Use bemi.table_at(NULL::table, moment).';
  END IF;
  IF event ? 'id' AND NOT event ? 'later' THEN
    -- The row as the latest change at or before the moment left it.
    IF event ->> 'operation' IN ('DELETE', 'TRUNCATE') OR event ->> 'primary_key' IS DISTINCT FROM primary_key THEN
      RETURN NULL;
    END IF;
    PERFORM bemi.refuse_incomplete(CASE WHEN (event ->> 'incomplete')::boolean THEN ARRAY[(event ->> 'id')::bigint] END);
    RETURN event -> 'after';
  ELSIF event ->> 'operation' = 'TRUNCATE' THEN
    RAISE EXCEPTION 'bemi: the row % of % at % is not in the trail: the table was truncated later (change %) and the row had no change before',
      primary_key, relation, at, event ->> 'id'
      USING ERRCODE = 'feature_not_supported', HINT = 'TRUNCATE does not write its rows to the WAL.';
  ELSIF event ? 'id' THEN
    -- Unchanged since tracking began, up to the moment: as the first change after it found it.
    IF event ->> 'operation' = 'CREATE' OR bemi.image_key(event -> 'before', keys) IS DISTINCT FROM primary_key THEN
      RETURN NULL;
    END IF;
    PERFORM bemi.refuse_incomplete(CASE WHEN (event ->> 'incomplete')::boolean THEN ARRAY[(event ->> 'id')::bigint] END);
    RETURN event -> 'before';
  END IF;
  -- Unchanged to this day (unless a write not yet ingested changed it).
  PERFORM bemi.check_pending(relation);
  EXECUTE pg_catalog.format('SELECT pg_catalog.to_jsonb(t.*) FROM %s AS t, pg_catalog.jsonb_populate_record(NULL::%s, $1) AS k WHERE %s',
      relation, relation, bemi.key_match(keys, 't', 'k'))
    INTO result
    USING CASE WHEN pg_catalog.cardinality(keys) = 1 THEN pg_catalog.jsonb_build_object(keys[1], primary_key)
      ELSE (SELECT pg_catalog.jsonb_object_agg(k.name, primary_key::jsonb -> (k.ord::integer - 1))
            FROM pg_catalog.unnest(keys) WITH ORDINALITY AS k(name, ord)) END;
  RETURN result;
END
$$;

CREATE OR REPLACE FUNCTION bemi.table_from(relation anyelement, at timestamptz, changes regclass) RETURNS SETOF anyelement
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  table_oid regclass := bemi.table_of(pg_catalog.pg_typeof(relation));
  schema_name text;
  table_name text;
  keys text[] := bemi.key_columns(table_oid);
  truncated bigint[];
BEGIN
  SELECT n.nspname, c.relname INTO schema_name, table_name
  FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace WHERE c.oid = table_oid;
  PERFORM bemi.check_pending(table_oid);  -- the table now is where the answer starts

  EXECUTE pg_catalog.format('SELECT pg_catalog.array_agg(c.id ORDER BY c.id) FROM %s AS c '
      'WHERE c.schema = $1 AND c."table" = $2 AND c.operation = ''TRUNCATE'' AND c.committed_at > $3', changes)
    INTO truncated USING schema_name, table_name, at;
  IF truncated IS NOT NULL THEN
    RAISE EXCEPTION 'bemi: % was truncated after % (changes %), and the rows it held are not in the trail', table_oid, at, truncated
      USING ERRCODE = 'feature_not_supported', HINT = 'TRUNCATE does not write its rows to the WAL; ask for a moment after the last TRUNCATE.';
  END IF;

  IF keys IS NULL THEN
    -- No key: the rows as a multiset, the table now, minus what later changes added, plus
    -- what they removed (compared as JSON of the typed row, generated columns left out).
    RETURN QUERY EXECUTE pg_catalog.format($q$
      WITH later AS (
        SELECT c.before, c.after FROM %3$s AS c
        WHERE c.schema = $1 AND c."table" = $2 AND c.committed_at > $3
      ), generated AS (
        SELECT coalesce(pg_catalog.array_agg(a.attname::text), '{}') AS names FROM pg_catalog.pg_attribute AS a
        WHERE a.attrelid = %2$s AND a.attgenerated <> '' AND NOT a.attisdropped
      ), counted AS (
        SELECT v.image, pg_catalog.sum(v.n) AS n FROM (
          SELECT pg_catalog.to_jsonb(t.*) OPERATOR(pg_catalog.-) (TABLE generated) AS image, 1 AS n FROM %1$s AS t
          UNION ALL
          SELECT pg_catalog.to_jsonb(r.*) OPERATOR(pg_catalog.-) (TABLE generated), -1
          FROM later AS l, pg_catalog.jsonb_populate_record(NULL::%1$s, l.after) AS r WHERE l.after <> '{}'
          UNION ALL
          SELECT pg_catalog.to_jsonb(r.*) OPERATOR(pg_catalog.-) (TABLE generated), 1
          FROM later AS l, pg_catalog.jsonb_populate_record(NULL::%1$s, l.before) AS r WHERE l.before <> '{}'
        ) AS v GROUP BY v.image
      )
      SELECT r.* FROM counted AS c, pg_catalog.generate_series(1, c.n::bigint) AS copies,
        pg_catalog.jsonb_populate_record(NULL::%1$s, c.image) AS r
      WHERE bemi.check_count(c.n)$q$, table_oid, table_oid::oid, changes)
      USING schema_name, table_name, at;
    RETURN;
  END IF;

  -- With a key: each row a later change touched as the first such change found it (its before
  -- image; none when that change created the key), every other row as it is now. One query,
  -- planned per call (the row type is the caller's); keys are pulled out of the images once.
  RETURN QUERY EXECUTE pg_catalog.format($q$
    WITH later AS (
      SELECT c.id, c.committed_at, c.before, c.after, c.problem IS NOT NULL OR c.partial AS incomplete
      FROM %5$s AS c WHERE c.schema = $1 AND c."table" = $2 AND c.committed_at > $3
    ), sides AS (
      SELECT l.committed_at, l.id, 0 AS side, bemi.known_values(l.before) AS image, l.incomplete, %2$s FROM later AS l,
        pg_catalog.jsonb_populate_record(NULL::%1$s, l.before) AS r WHERE l.before <> '{}'
      UNION ALL
      SELECT l.committed_at, l.id, 1, NULL, false, %2$s FROM later AS l,
        pg_catalog.jsonb_populate_record(NULL::%1$s, l.after) AS r WHERE l.after <> '{}'
    ), firsts AS (
      SELECT DISTINCT ON (%3$s) s.id, s.image, s.incomplete FROM sides AS s ORDER BY %3$s, s.committed_at, s.id, s.side
    ), used AS (
      SELECT f.image, pg_catalog.array_agg(f.id) FILTER (WHERE f.incomplete) OVER () AS incomplete
      FROM firsts AS f WHERE f.image IS NOT NULL
    )
    SELECT t.* FROM %1$s AS t WHERE NOT EXISTS (SELECT FROM sides AS s WHERE %4$s)
    UNION ALL
    SELECT r.* FROM used AS u, pg_catalog.jsonb_populate_record(NULL::%1$s, u.image) AS r
    WHERE bemi.refuse_incomplete(u.incomplete)$q$,
    table_oid,
    (SELECT pg_catalog.string_agg(pg_catalog.format('r.%I AS bemi_key_%s', k.name, k.ord), ', ')
     FROM pg_catalog.unnest(keys) WITH ORDINALITY AS k(name, ord)),
    (SELECT pg_catalog.string_agg(pg_catalog.format('s.bemi_key_%s', k.ord), ', ')
     FROM pg_catalog.unnest(keys) WITH ORDINALITY AS k(name, ord)),
    (SELECT pg_catalog.string_agg(pg_catalog.format('s.bemi_key_%s = t.%I', k.ord, k.name), ' AND ')
     FROM pg_catalog.unnest(keys) WITH ORDINALITY AS k(name, ord)),
    changes)
    USING schema_name, table_name, at;
END
$$;


REVOKE ALL ON FUNCTION bemi.pending_writes(regclass, integer), bemi.covered_from(name, oid, text, text),
  bemi.check_stored(regclass, bigint[]), bemi.check_pending(regclass) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bemi.covered_from(name, oid, text, text), bemi.check_stored(regclass, bigint[]),
  bemi.check_pending(regclass) TO PUBLIC;

-- ---------------------------------------------------------------------------------------
-- The worker as a service (issue 19): bemi.describe_relation runs as the extension's owner,
-- so the role of a worker storing into a trail database needs only EXECUTE on it in the
-- source (docs/trail-database.md), not SELECT on bemi.tracking and bemi.keys.

ALTER FUNCTION bemi.describe_relation(oid, oid[], integer[], pg_lsn) SECURITY DEFINER;
