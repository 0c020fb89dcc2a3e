\echo Use "ALTER EXTENSION bemi UPDATE TO '1.1'" to load this file. \quit

-- bemi 1.1. A fresh CREATE EXTENSION bemi runs bemi--1.0.sql and then this script, so a new
-- install and an upgraded one are the same by construction (tests/test_upgrade.py compares them).
-- Sections follow a change on its way, as in 1.0: context, trigger, tracking, slot,
-- decoding, storing; then what reads the trail (time travel, revert) and uninstalling.

------------------------------------------------------------------------------------------
-- 1. Context: the application says who, where and how, once per transaction.
------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------
-- 2. The context trigger: before each statement on a tracked table, put the context into
--    the WAL, once, and only when it differs from the last one this transaction emitted.
------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------
-- 3. Tracking: a tracked table carries the context trigger, logs whole rows (REPLICA
--    IDENTITY FULL) and is a member of the publication the slot decodes.
------------------------------------------------------------------------------------------

-- What each tracked table (and each partition or inheritance child under it) was like before
-- track: its replica identity, given back by untrack; and when tracking began, for time travel.
CREATE TABLE bemi.tracking (
  relation oid PRIMARY KEY,
  root oid NOT NULL,
  schema text NOT NULL,
  "table" text NOT NULL,
  tracked_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  replica_identity text NOT NULL
);

COMMENT ON TABLE bemi.tracking IS
  'Tracked tables and their members: when tracking began, and the replica identity (as an ALTER TABLE clause) untrack restores.';

SELECT pg_catalog.pg_extension_config_dump('bemi.tracking', '');

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

CREATE OR REPLACE FUNCTION bemi.track(relation regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  member regclass;
  kind "char";
  persistence "char";
  is_partition boolean;
BEGIN
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
    INSERT INTO bemi.tracking (relation, root, schema, "table", replica_identity)
    SELECT member, relation, n.nspname, c.relname, bemi.replica_identity(member)
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = member
    ON CONFLICT ON CONSTRAINT tracking_pkey DO NOTHING;
    IF (SELECT c.relreplident FROM pg_catalog.pg_class c WHERE c.oid = member) <> 'f' THEN
      EXECUTE pg_catalog.format('ALTER TABLE %s REPLICA IDENTITY FULL', member);
    END IF;
    -- Statement triggers of a parent do not fire for statements on a partition or child.
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.tgrelid = member AND t.tgname = 'bemi_context') THEN
      EXECUTE pg_catalog.format(
        'CREATE TRIGGER bemi_context BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION bemi.context_trigger()', member);
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

-- Tables a 1.0 install tracks: their replica identity before track is not known (DEFAULT assumed).
INSERT INTO bemi.tracking (relation, root, schema, "table", tracked_at, replica_identity)
SELECT m.member, t.relation, n.nspname, c.relname,
  least(pg_catalog.now(), (SELECT pg_catalog.min(x.committed_at) FROM bemi.changes x
                           WHERE x.schema = t.schema AND x."table" = t."table")), 'DEFAULT'
FROM bemi.tracked t
CROSS JOIN LATERAL bemi.members(t.relation) AS m(member)
JOIN pg_catalog.pg_class c ON c.oid = m.member
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace;

-- 1.0's name registry is only read while the 1.0 slot is drained (section 5).
REVOKE ALL ON FUNCTION bemi.remember_names() FROM PUBLIC;
REVOKE ALL ON bemi.tracking FROM PUBLIC;
REVOKE ALL ON FUNCTION bemi.members(regclass), bemi.replica_identity(regclass) FROM PUBLIC;

------------------------------------------------------------------------------------------
-- 4. Tracking new tables: an event trigger tracks tables and partitions created later.
------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------
-- 5. The slot: one logical slot per database (pgoutput, over the publication "bemi"),
--    keeping the WAL until it is stored.
------------------------------------------------------------------------------------------

-- The publication is the set of tables the slot decodes; partitions report as their root.
CREATE PUBLICATION bemi WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true);

DO $$
DECLARE
  member regclass;
BEGIN
  -- Tables a 1.0 install tracks join the publication.
  FOR member IN SELECT t.relation::pg_catalog.regclass FROM bemi.tracking t
    JOIN pg_catalog.pg_class c ON c.oid = t.relation WHERE NOT c.relispartition
  LOOP
    EXECUTE pg_catalog.format('ALTER PUBLICATION bemi ADD TABLE ONLY %s', member);
  END LOOP;
END
$$;

-- The slot of this database: slot names are cluster-wide, so each database has its own.
CREATE FUNCTION bemi.slot_name() RETURNS name
LANGUAGE sql STABLE
RETURN ('bemi_' || (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()))::name;

COMMENT ON FUNCTION bemi.slot_name() IS 'The name of this database''s logical slot: bemi_<database oid>.';

ALTER TABLE bemi.progress
  ADD COLUMN committed_at timestamptz,
  ADD COLUMN caught_up_at timestamptz,
  ADD COLUMN part_of pg_lsn,
  ADD COLUMN part_stored bigint NOT NULL DEFAULT 0;

COMMENT ON TABLE bemi.progress IS
  'Per slot: the end of the last transaction whose changes are all stored (the slot may be confirmed up to here), a transaction stored in parts so far, and how current the trail is.';
COMMENT ON COLUMN bemi.progress.part_of IS 'The commit LSN of a transaction stored in parts; part_stored of its changes are stored.';
COMMENT ON COLUMN bemi.progress.caught_up_at IS 'Every transaction committed up to this time is stored.';

-- A slot left by an earlier install (DROP EXTENSION keeps slots) keeps WAL and is never read.
DO $$
DECLARE
  leftover name;
BEGIN
  SELECT s.slot_name INTO leftover FROM pg_catalog.pg_replication_slots s
  WHERE s.slot_name = bemi.slot_name() AND NOT EXISTS (SELECT FROM bemi.progress p WHERE p.slot_name = s.slot_name);
  IF FOUND THEN
    RAISE WARNING 'bemi: the slot "%" of an earlier install exists and keeps WAL that nothing reads', leftover
      USING HINT = pg_catalog.format('Drop it with SELECT pg_drop_replication_slot(%L); then SELECT bemi.create_slot();', leftover);
  END IF;
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
  -- Moving from 1.0: the test_decoding slot "bemi" is drained into the trail up to and past the
  -- new slot's start (a change stored by both is stored once: same position and ordinal), then dropped.
  IF EXISTS (SELECT FROM pg_catalog.pg_replication_slots s
             WHERE s.slot_name = 'bemi' AND s.database = pg_catalog.current_database() AND s.plugin = 'test_decoding') THEN
    PERFORM bemi.ingest_test_decoding(1000000000);
    PERFORM pg_catalog.pg_drop_replication_slot('bemi');
    DELETE FROM bemi.progress p WHERE p.slot_name = 'bemi';
  END IF;
  RETURN start;
END
$$;

COMMENT ON FUNCTION bemi.create_slot() IS
  'Creates this database''s logical slot (pgoutput over the publication bemi); changes are captured from here on. Drains a 1.0 slot first.';

CREATE OR REPLACE FUNCTION bemi.drop_slot() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM pg_catalog.pg_drop_replication_slot(bemi.slot_name());
  DELETE FROM bemi.progress p WHERE p.slot_name = bemi.slot_name();
END
$$;

COMMENT ON FUNCTION bemi.drop_slot() IS 'Drops this database''s logical slot; WAL not yet stored is no longer kept.';

-- The 1.0 ingest, kept only for create_slot to drain a 1.0 slot after ALTER EXTENSION UPDATE.
ALTER FUNCTION bemi.ingest(integer) RENAME TO ingest_test_decoding;
COMMENT ON FUNCTION bemi.ingest_test_decoding(integer) IS
  'The 1.0 ingest from the test_decoding slot "bemi"; bemi.create_slot() drains that slot with it once.';

------------------------------------------------------------------------------------------
-- 6. Decoding: pgoutput's binary messages, read by the SQL path (bemi.ingest, bemi.wal).
--    The streaming worker reads the same messages in Python (python/bemi_pg/pgoutput.py).
------------------------------------------------------------------------------------------

-- A big-endian integer of width bytes at a zero-based offset of a pgoutput message.
CREATE FUNCTION bemi.int_at(message bytea, at integer, width integer) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ('x' || pg_catalog.lpad(pg_catalog.encode(pg_catalog.substr(message, at + 1, width), 'hex'), 16, '0'))::bit(64)::bigint;

-- A pgoutput timestamp (microseconds since 2000-01-01 UTC).
CREATE FUNCTION bemi.time_at(message bytea, at integer) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN '2000-01-01 00:00:00+00'::timestamptz + (bemi.int_at(message, at, 8) || ' microseconds')::interval;

-- The stage the SQL path shares with the streaming worker (python/bemi_pg/pgoutput.py and
-- store.py do the same in Python): each change of a tracked table becomes a row of
-- bemi.staged with its values as text, stitched to the context message before it, and each
-- relation as described at the change a row of bemi.staged_relations. The slot is peeked, not
-- consumed. Returns the other entries (B, C, M), wal2json-shaped, for bemi.wal and ingest.
CREATE FUNCTION bemi.stage_from_slot(max_changes integer)
RETURNS TABLE (seq bigint, lsn pg_lsn, xid xid, data jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  encoding name := pg_catalog.pg_client_encoding();
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
        context := pg_catalog.convert_from(pg_catalog.substr(m, ends + 5, bemi.int_at(m, ends, 4)::integer), encoding);
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

------------------------------------------------------------------------------------------
-- 7. Storing: both readers stage changes with their values as text; one converter turns
--    them into typed JSON with the server's own input functions and stores them once.
------------------------------------------------------------------------------------------

ALTER TABLE bemi.changes
  ADD COLUMN problem text,
  ADD COLUMN partial boolean NOT NULL DEFAULT false;

COMMENT ON COLUMN bemi.changes.problem IS
  'Why the values could not be converted (they are stored as JSON strings), or NULL.';
COMMENT ON COLUMN bemi.changes.partial IS
  'The WAL held only part of the old row (its key): before has just what was known.';

-- Changes read from the slot, values as text, waiting to be converted and stored in the same
-- transaction (the contract: docs/ingest.md). Unlogged: nothing here outlives its transaction.
CREATE UNLOGGED TABLE bemi.staged_relations (
  relation integer NOT NULL,
  relid oid NOT NULL,
  schema text NOT NULL,
  "table" text NOT NULL,
  columns text[] NOT NULL,
  types oid[] NOT NULL,
  typmods integer[] NOT NULL,
  identity boolean[] NOT NULL
);

CREATE UNLOGGED TABLE bemi.staged (
  seq bigint NOT NULL,
  relation integer NOT NULL,
  operation "char" NOT NULL,
  position pg_lsn NOT NULL,
  ordinal integer NOT NULL,
  transaction_id bigint NOT NULL,
  committed_at timestamptz NOT NULL,
  context text,
  old_values text[],
  old_key_only boolean NOT NULL DEFAULT false,
  new_values text[],
  new_missing integer[]
);

-- The type a column is read as: its type with its modifier (character(3)[] keeps its length);
-- text when the type is gone since.
CREATE FUNCTION bemi.column_type(type oid, typmod integer) RETURNS text
LANGUAGE sql STABLE
RETURN CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_type t WHERE t.oid = type)
  THEN pg_catalog.format_type(type, typmod) ELSE 'text' END;

-- The SQL expression of one row image as jsonb, from a text[] expression holding its values:
-- each value read by its type's input function, and to_jsonb's rules make the JSON. Chunks
-- of 50 columns, as a function takes at most 100 arguments.
CREATE FUNCTION bemi.image_sql(columns text[], types oid[], typmods integer[], vals text) RETURNS text
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT coalesce(pg_catalog.string_agg(chunk.sql, ' || ' ORDER BY chunk.n), '''{}''::jsonb')
  FROM (
    SELECT (c.i - 1) / 50 AS n,
      'pg_catalog.jsonb_build_object(' || pg_catalog.string_agg(
        pg_catalog.format('%L, (%s)[%s]::%s', columns[c.i], vals, c.i, bemi.column_type(types[c.i], typmods[c.i])),
        ', ' ORDER BY c.i) || ')' AS sql
    FROM pg_catalog.generate_subscripts(columns, 1) AS c(i)
    GROUP BY 1
  ) AS chunk;
END;

-- The trail's primary_key of a relation's changes: from its primary key in the catalog, the
-- value as text for one column, a JSON array text for several, NULL without one.
CREATE FUNCTION bemi.primary_key_sql(relid oid, image text) RETURNS text
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT CASE pg_catalog.count(*)
    WHEN 0 THEN 'NULL::text'
    WHEN 1 THEN pg_catalog.format('(%s) ->> %L', image, pg_catalog.min(a.attname::text))
    ELSE 'pg_catalog.jsonb_build_array(' || pg_catalog.string_agg(pg_catalog.format('(%s) -> %L', image, a.attname), ', ' ORDER BY k.ord) || ')::text'
  END
  FROM pg_catalog.pg_index i
  CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::smallint[]) WITH ORDINALITY AS k(attnum, ord)
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
  WHERE i.indrelid = relid AND i.indisprimary;
END;

-- The query that converts the staged changes of one relation into rows of bemi.changes (in
-- seq order, with seq). When converting fails, row_filter picks single changes, and as_text
-- keeps the values as JSON strings, so a change that cannot be converted is still stored.
CREATE FUNCTION bemi.convert_sql(r bemi.staged_relations, row_filter text DEFAULT 'true', as_text boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  old_image text := CASE WHEN as_text THEN 'pg_catalog.jsonb_object(r.columns, s.old_values)'
    ELSE bemi.image_sql(r.columns, r.types, r.typmods, 's.old_values') END;
  new_image text := CASE WHEN as_text THEN 'pg_catalog.jsonb_object(r.columns, s.new_values)'
    ELSE bemi.image_sql(r.columns, r.types, r.typmods, 's.new_values') END;
BEGIN
  RETURN pg_catalog.format($q$
    SELECT s.seq, r.schema, r."table", CASE s.operation WHEN 'D' THEN %5$s WHEN 'T' THEN NULL ELSE %6$s END AS primary_key,
      CASE s.operation WHEN 'I' THEN 'CREATE' WHEN 'U' THEN 'UPDATE' WHEN 'D' THEN 'DELETE' ELSE 'TRUNCATE' END AS operation,
      coalesce(i.before, '{}') AS before, coalesce(i.after, '{}') AS after,
      coalesce(bemi.context_json(s.context), '{}') AS context, s.committed_at, s.transaction_id, s.position, s.ordinal,
      %3$L::text AS problem, s.old_key_only OR s.new_missing IS NOT NULL AS partial
    FROM bemi.staged s JOIN bemi.staged_relations r ON r.relation = s.relation
    CROSS JOIN LATERAL (SELECT
      CASE WHEN s.old_values IS NULL THEN NULL WHEN s.old_key_only
        THEN (%1$s) - (SELECT pg_catalog.array_agg(c) FROM ROWS FROM (pg_catalog.unnest(r.columns), pg_catalog.unnest(r.identity)) AS k(c, key) WHERE NOT k.key)
        ELSE %1$s END AS before,
      CASE WHEN s.new_values IS NULL AND s.new_missing IS NULL THEN NULL WHEN s.new_missing IS NOT NULL
        THEN (%2$s) - (SELECT pg_catalog.array_agg(r.columns[m]) FROM pg_catalog.unnest(s.new_missing) AS m)
        ELSE %2$s END AS after
    ) AS i
    WHERE s.relation = %4$s AND %7$s
    $q$, old_image, new_image, CASE WHEN as_text THEN '' END, r.relation,
    bemi.primary_key_sql(r.relid, 'i.before'), bemi.primary_key_sql(r.relid, 'i.after'), row_filter);
END
$$;

-- Stores every staged change in bemi.changes, in seq order, exactly once (a change already
-- stored keeps its row), empties the stage, and records how far the trail is complete.
-- The one converter of both readers: bemi.ingest() and the streaming worker (docs/ingest.md).
CREATE FUNCTION bemi.store(through pg_lsn, part_of pg_lsn DEFAULT NULL, part_stored bigint DEFAULT 0,
  caught_up_at timestamptz DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET timezone = 'UTC'
AS $$
DECLARE
  queries text;
  inserted bigint := 0;
  n bigint;
  newest timestamptz;
  change record;
  r bemi.staged_relations;
  columns constant text := 'schema, "table", primary_key, operation, before, after, context, committed_at, '
                           'transaction_id, position, ordinal, problem, partial';
BEGIN
  PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('bemi.ingest'));
  SELECT pg_catalog.string_agg(bemi.convert_sql(x), ' UNION ALL ') INTO queries
  FROM bemi.staged_relations x WHERE x.relation IN (SELECT s.relation FROM bemi.staged s);
  IF queries IS NOT NULL THEN
    BEGIN
      EXECUTE pg_catalog.format('INSERT INTO bemi.changes (%s) SELECT %s FROM (%s) AS c ORDER BY c.seq '
        'ON CONFLICT (position, ordinal) DO NOTHING', columns, columns, queries);
      GET DIAGNOSTICS inserted = ROW_COUNT;
    EXCEPTION WHEN OTHERS THEN
      -- Some value cannot be converted: store change by change, each that fails as text.
      FOR change IN SELECT s.seq, s.relation FROM bemi.staged s ORDER BY s.seq LOOP
        SELECT * INTO r FROM bemi.staged_relations x WHERE x.relation = change.relation;
        BEGIN
          EXECUTE pg_catalog.format('INSERT INTO bemi.changes (%s) SELECT %s FROM (%s) AS c '
            'ON CONFLICT (position, ordinal) DO NOTHING', columns, columns, bemi.convert_sql(r, 's.seq = $1'))
            USING change.seq;
        EXCEPTION WHEN OTHERS THEN
          EXECUTE pg_catalog.format('INSERT INTO bemi.changes (%s) SELECT %s FROM (%s) AS c '
            'ON CONFLICT (position, ordinal) DO NOTHING', columns,
            pg_catalog.replace(columns, 'problem', '$2'), bemi.convert_sql(r, 's.seq = $1', true))
            USING change.seq, SQLSTATE || ': ' || SQLERRM;
        END;
        GET DIAGNOSTICS n = ROW_COUNT;
        inserted := inserted + n;
      END LOOP;
    END;
  END IF;
  SELECT pg_catalog.max(s.committed_at) INTO newest FROM bemi.staged s;
  DELETE FROM bemi.staged;
  DELETE FROM bemi.staged_relations;
  UPDATE bemi.progress p SET lsn = greatest(p.lsn, through), part_of = store.part_of, part_stored = store.part_stored,
    committed_at = greatest(p.committed_at, newest), caught_up_at = coalesce(store.caught_up_at, p.caught_up_at),
    ingested_at = pg_catalog.now(), stored = inserted
  WHERE p.slot_name = bemi.slot_name();
  -- The slot is confirmed up to these rows once this commits: they must be on disk first.
  PERFORM pg_catalog.set_config('synchronous_commit', 'on', true);
  RETURN inserted;
END
$$;

COMMENT ON FUNCTION bemi.store(pg_lsn, pg_lsn, bigint, timestamptz) IS
  'Converts the staged changes and stores them in bemi.changes exactly once; records progress up to through.';

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
  started timestamptz := pg_catalog.clock_timestamp();
  flushed pg_lsn := pg_catalog.pg_current_wal_flush_lsn();
  read bigint;
BEGIN
  IF max_changes IS NULL OR max_changes < 1 THEN
    RAISE EXCEPTION 'bemi: max_changes must be a positive number, not %', coalesce(max_changes::text, 'NULL')
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  -- One ingest at a time; a second one waits here, then carries on after the first.
  PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('bemi.ingest'));
  SELECT s.confirmed_flush_lsn INTO slot_at FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = slot;
  IF NOT FOUND AND EXISTS (SELECT FROM pg_catalog.pg_replication_slots s
                           WHERE s.slot_name = 'bemi' AND s.database = pg_catalog.current_database()) THEN
    -- After ALTER EXTENSION bemi UPDATE from 1.0: move to the 1.1 slot (before any write here).
    PERFORM bemi.create_slot();
    SELECT s.confirmed_flush_lsn INTO slot_at FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = slot;
  END IF;
  IF slot_at IS NULL THEN
    RAISE EXCEPTION 'bemi: the replication slot "%" does not exist in database "%"', slot, pg_catalog.current_database()
      USING ERRCODE = 'undefined_object', HINT = 'Create it with SELECT bemi.create_slot(); changes made before are not captured.';
  END IF;
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
  -- slot may then move that far, past the WAL of other tables, and the trail is current.
  IF coalesce(read, 0) < max_changes THEN
    RETURN bemi.store(greatest(through, flushed, done), NULL, 0, started);
  END IF;
  RETURN bemi.store(greatest(through, done));
END
$$;

COMMENT ON FUNCTION bemi.ingest(integer) IS
  'Moves pending changes from the slot into bemi.changes, exactly once; returns how many.';

-- The pending entries, wal2json format-version 2 shaped, without consuming them: the staged
-- changes converted as bemi.store would, between their B, M and C entries.
CREATE OR REPLACE FUNCTION bemi.peek(max_changes integer DEFAULT NULL)
RETURNS TABLE (lsn pg_lsn, xid xid, data jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET timezone = 'UTC'
AS $$
DECLARE
  queries text;
  entries jsonb;
BEGIN
  SELECT pg_catalog.jsonb_agg(pg_catalog.to_jsonb(e)) INTO entries FROM bemi.stage_from_slot(max_changes) AS e;
  SELECT pg_catalog.string_agg(bemi.convert_sql(x), ' UNION ALL ') INTO queries FROM bemi.staged_relations x;
  RETURN QUERY EXECUTE pg_catalog.format($q$
    SELECT e.lsn, e.xid, e.data FROM (
      SELECT e.seq, 0 AS sub, e.lsn, e.xid, e.data
      FROM pg_catalog.jsonb_to_recordset($1) AS e(seq bigint, lsn pg_lsn, xid xid, data jsonb)
      UNION ALL
      SELECT c.seq, c.ordinal, c.position, c.transaction_id::text::xid,
        pg_catalog.jsonb_build_object('action', pg_catalog.left(c.operation, 1), 'schema', c.schema, 'table', c."table")
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
        || coalesce((SELECT pg_catalog.jsonb_build_object('pk', pg_catalog.jsonb_agg(
               pg_catalog.jsonb_build_object('name', a.attname, 'type', pg_catalog.format_type(a.atttypid, NULL)) ORDER BY k.ord))
             FROM pg_catalog.pg_index i
             CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::smallint[]) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = r.relid AND i.indisprimary HAVING pg_catalog.count(*) > 0), '{}')
      FROM (%s) AS c JOIN bemi.staged s ON s.seq = c.seq AND s.ordinal = c.ordinal
      JOIN bemi.staged_relations r ON r.relation = s.relation
    ) AS e ORDER BY e.seq, e.sub
    $q$, coalesce(queries, 'SELECT NULL::bigint AS seq, NULL::text AS schema, NULL::text AS "table", NULL::text AS operation, '
      'NULL::jsonb AS before, NULL::jsonb AS after, NULL::bigint AS transaction_id, NULL::pg_lsn AS position, '
      'NULL::integer AS ordinal WHERE false')) USING entries;
  DELETE FROM bemi.staged;
  DELETE FROM bemi.staged_relations;
END
$$;

-- Every transaction committed at or before this time is in the trail: when an ingest last
-- read to the end of the slot, else the newest stored commit. Time travel stops here.
CREATE FUNCTION bemi.ingested_until() RETURNS timestamptz
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT greatest(p.caught_up_at, p.committed_at) FROM bemi.progress p WHERE p.slot_name = bemi.slot_name();
END;

COMMENT ON FUNCTION bemi.ingested_until() IS
  'Every transaction committed at or before this time is in bemi.changes (NULL: nothing ingested yet).';

REVOKE ALL ON bemi.staged, bemi.staged_relations FROM PUBLIC;
REVOKE ALL ON FUNCTION bemi.store(pg_lsn, pg_lsn, bigint, timestamptz), bemi.ingest(integer),
  bemi.stage_from_slot(integer), bemi.peek(integer), bemi.convert_sql(bemi.staged_relations, text, boolean),
  bemi.image_sql(text[], oid[], integer[], text), bemi.primary_key_sql(oid, text) FROM PUBLIC;

------------------------------------------------------------------------------------------
-- 8. Time travel: a row or a whole table as it was at a commit time, from the trail.
------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------
-- 9. Revert: undo the net effect of changes, conflict-checked, in the caller's transaction.
------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------
-- 10. Uninstall: what bemi-pg uninstall runs before the extension or plain install goes.
------------------------------------------------------------------------------------------
