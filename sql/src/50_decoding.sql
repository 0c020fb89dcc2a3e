------------------------------------------------------------------------------------------
-- 6. Decoding: pgoutput's binary messages, read by the SQL path (bemi.ingest, bemi.wal).
--    The streaming worker reads the same messages in Python (python/bemi_pg/pgoutput.py).
--    Holds: bemi.int_at(), bemi.time_at(), bemi.message_text(), bemi.partition_message(),
--    bemi.stage_from_slot().
------------------------------------------------------------------------------------------

-- A big-endian integer of width bytes at a zero-based offset of a pgoutput message.
CREATE FUNCTION bemi.int_at(message bytea, at integer, width integer) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ('x' || pg_catalog.lpad(pg_catalog.encode(pg_catalog.substr(message, at + 1, width), 'hex'), 16, '0'))::bit(64)::bigint;

-- A pgoutput timestamp (microseconds since 2000-01-01 UTC), exact: whole seconds and the
-- microseconds after them (PostgreSQL 14 reads no interval of that many microseconds, and a
-- float of them would round).
CREATE FUNCTION bemi.time_at(message bytea, at integer) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN '2000-01-01 00:00:00+00'::timestamptz
  + (bemi.int_at(message, at, 8) / 1000000) * interval '1 second'
  + (bemi.int_at(message, at, 8) % 1000000) * interval '1 microsecond';

-- A bemi message's content as text. The context trigger writes it in the database's
-- encoding, but any role may emit a bemi message, with bytes of any kind: content that is not
-- text of this encoding is kept as its hex form ("\x..."), which is not JSON, so it is stored
-- as {"invalid_context": ...} and ingest goes on (docs/security.md).
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

-- A 'bemi.truncate' message (bemi.partition_event) read, or NULL when it is not one bemi
-- wrote: {"relid", "schema", "table"} of the root, and the values of the TRUNCATE's before
-- (partition_schema, partition, event). Staged as a TRUNCATE of the root, the relation
-- described by these three text columns; both ingest paths do the same (the worker in
-- python/bemi_pg/ingest/staging.py).
CREATE FUNCTION bemi.partition_message(content text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  parsed jsonb;
BEGIN
  parsed := content::jsonb;
  IF pg_catalog.jsonb_typeof(parsed) = 'object' AND pg_catalog.jsonb_typeof(parsed -> 'relid') = 'number'
     AND (parsed ->> 'relid') ~ '^[0-9]{1,10}$' AND (parsed ->> 'relid')::bigint BETWEEN 1 AND 4294967295
     AND parsed ->> 'event' IN ('truncate', 'detach', 'attach')
     AND (SELECT pg_catalog.count(*) FROM pg_catalog.jsonb_each(parsed) AS e
          WHERE e.key IN ('schema', 'table', 'partition_schema', 'partition') AND pg_catalog.jsonb_typeof(e.value) = 'string') = 4 THEN
    RETURN parsed;
  END IF;
  RETURN NULL;
EXCEPTION WHEN data_exception THEN
  RETURN NULL;
END
$$;

-- The stage the SQL path shares with the streaming worker (python/bemi_pg/pgoutput.py and
-- store.py do the same in Python): each change of a tracked table becomes a row of
-- bemi.staged with its values as text, stitched to the context message before it, and each
-- relation as described at the change a row of bemi.staged_relations. The slot is peeked, not
-- consumed, up to a position (NULL: all the WAL flushed). Returns the other entries (B, C, M),
-- wal2json-shaped, for bemi.wal and ingest.
-- pgoutput writes the values with the settings of this function, so every setting an output
-- function reads is pinned (the streaming worker's replication connection sets the same:
-- python/bemi_pg/ingest/stream.py): values are the same whoever reads the slot.
CREATE FUNCTION bemi.stage_from_slot(max_changes integer, upto pg_lsn DEFAULT NULL)
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
  event jsonb;
BEGIN
  -- Sent as UTF8, an SQL_ASCII database's bytes would first be checked as UTF8, and the first
  -- value that is not would stop ingest. (The SET clause restores client_encoding on return.)
  IF encoding = 'SQL_ASCII' THEN
    PERFORM pg_catalog.set_config('client_encoding', 'SQL_ASCII', true);
  END IF;
  seq := 0;
  FOR message IN
    SELECT w.lsn, w.xid, w.data FROM pg_catalog.pg_logical_slot_peek_binary_changes(bemi.slot_name(), upto, max_changes,
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
      ELSIF pg_catalog.get_byte(m, 1) = 1 AND pg_catalog.substr(m, 11, ends - 11) = '\x62656d692e7472756e63617465'::bytea THEN
        -- 'bemi.truncate': rows of a partition that left or joined the root (bemi.partition_event).
        event := bemi.partition_message(bemi.message_text(pg_catalog.substr(m, ends + 5, bemi.int_at(m, ends, 4)::integer)));
        IF event IS NOT NULL THEN
          shapes := shapes + 1;
          INSERT INTO bemi.staged_relations (relation, relid, schema, "table", columns, types, typmods, identity)
          VALUES (shapes, (event ->> 'relid')::bigint::oid, event ->> 'schema', event ->> 'table',
                  '{partition_schema,partition,event}', '{25,25,25}', '{-1,-1,-1}', '{f,f,f}');
          IF message.lsn IS DISTINCT FROM last_position THEN ordinal := 0; last_position := message.lsn; END IF;
          ordinal := ordinal + 1;
          INSERT INTO bemi.staged (seq, relation, operation, position, ordinal, transaction_id, committed_at, context, old_values)
          VALUES (seq, shapes, 'T', message.lsn, ordinal, xact_id, commit_time, context,
                  ARRAY[event ->> 'partition_schema', event ->> 'partition', event ->> 'event']);
        END IF;
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
      -- A TRUNCATE of a root covers the partition TRUNCATEs of its statement (and any before it
      -- in its transaction): those are not stored.
      DELETE FROM bemi.staged AS s USING bemi.staged_relations AS r
      WHERE r.relation = s.relation AND s.operation = 'T' AND s.old_values IS NOT NULL AND s.transaction_id = xact_id
        AND r.relid IN (SELECT bemi.int_at(m, 6 + 4 * g.n, 4)::oid FROM pg_catalog.generate_series(0, relids - 1) AS g(n));
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
