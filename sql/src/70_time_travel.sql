------------------------------------------------------------------------------------------
-- 8. Time travel: a row or a whole table as it was at a commit time, from the trail.
--    Holds: bemi.image_key(), bemi.message_relids(), bemi.pending_writes(), bemi.covered_from(),
--    bemi.history_of(), bemi.check_trail(), bemi.check_pending(), bemi.check_stored(), bemi.refuse_incomplete(),
--    bemi.known_values(), bemi.scan_of(), bemi.key_match(), bemi.key_values(), bemi.trail_key(), bemi.key_form(),
--    bemi.same_key(), bemi.row_event(), bemi.keys_by_value(), bemi.trail_keys(), bemi.key_event(), bemi.shared_key_event(),
--    bemi.shared_key_settled(), bemi.row_history(), bemi.in_partition(), bemi.partition_verdict(),
--    bemi.row_from(), bemi.row_at(), bemi.unfit_value(), bemi.check_count(), bemi.check_presence(), bemi.table_of(),
--    bemi.table_history(), bemi.key_after(), bemi.table_from(), bemi.table_at(), bemi.table_page_at(),
--    bemi.row_at_commit(), bemi.table_at_commit(), bemi.transaction_moment(), bemi.row_at_transaction(),
--    bemi.table_at_transaction(), bemi.position_gap(), bemi.position_moment(), bemi.row_at_position(),
--    bemi.table_at_position(), bemi.row_versions(), bemi.diff().
------------------------------------------------------------------------------------------

-- Time is commit time (committed_at, ties broken by id). A row's history, an UPDATE that
-- moved its key away and a TRUNCATE are each found with an index of every partition
-- (bemi.index_partition, section 7). SQLSTATEs (docs/time-travel.md):
-- 22023 bad argument or moment, 22000 an image the answer needs is incomplete (problem,
-- partial), 0A000 a TRUNCATE the answer would have to see through; the coverage record's:
-- ZB001 a moment the trail may lack changes after (a gap), ZB002 a change of a transaction
-- stored only in part, 55000 writes of the table not yet in the trail.

-- The primary key of a row image in the text form of bemi.changes.primary_key: the value as
-- text for one column, a JSON array for several; NULL for {} or a table without a key.
CREATE FUNCTION bemi.image_key(image jsonb, key_columns text[]) RETURNS text
LANGUAGE sql IMMUTABLE
RETURN CASE
  WHEN image = '{}' OR key_columns IS NULL THEN NULL
  WHEN pg_catalog.cardinality(key_columns) = 1 THEN image ->> key_columns[1]
  ELSE (SELECT pg_catalog.jsonb_agg(image -> k.name ORDER BY k.ord)
        FROM pg_catalog.unnest(key_columns) WITH ORDINALITY AS k(name, ord))::text END;

-- Time travel and revert read the trail and the tables. Where the trail is kept in a database
-- of its own (docs/trail-database.md) those are two databases, so each is built of parts that
-- run where the tables are (history_of, row_from, table_from, revert_from) and parts that run
-- where the trail is (check_trail, row_history, table_history), passing JSON or a copy of the
-- trail's rows (a relation shaped like bemi.changes) between them. Here both are one database:
-- row_at, table_at and revert are those parts put together; bemi_pg's helpers put them
-- together across two connections.

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
  -- Every commit the caller sees is flushed then, and read up to what is flushed: a read past
  -- it waits until the WAL there is flushed, which on an idle server can take seconds (WAL of
  -- no commit, such as a page pruned, is flushed only as pages fill or a commit comes).
  PERFORM bemi.flushed_past(upto);
  upto := least(upto, pg_catalog.pg_current_wal_flush_lsn());
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

-- Where the table is: checks that it was tracked at the moment, and tells the trail where its
-- changes are: under which names (now, and when tracking began), from which slot.
-- SECURITY DEFINER: it reads bemi.tracking for callers that may not, and tells them only the
-- names and when tracking began.
CREATE FUNCTION bemi.history_of(relation regclass, at timestamptz) RETURNS jsonb
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

-- Where the trail is: checks that it can answer for the table of a history_of at the moment:
-- nothing before it was pruned, the table was not renamed since its changes began (the trail
-- names a table as it was at each change: history under a former name is not found), and every
-- commit up to the moment is stored. It runs with its caller's rights: whether the trail
-- holds a table's changes is told only to those who may read the trail (the horizon and how
-- far it is stored, bemi.retained_from and bemi.ingested_until tell anyone).
CREATE FUNCTION bemi.check_trail(history jsonb, at timestamptz) RETURNS boolean
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
  covered := bemi.trail_covered_from(history);
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

-- Where the trail is: the end of the last gap of the table of a history_of (bemi.covered_from),
-- in this database and where the trail is. A row's last change at or before it tells nothing
-- of the row after it (a change in the gap may have followed).
CREATE FUNCTION bemi.trail_covered_from(history jsonb) RETURNS timestamptz
LANGUAGE sql STABLE
RETURN greatest((history ->> 'covered_from')::timestamptz,
  bemi.covered_from((history ->> 'slot')::name, NULL, history ->> 'schema', history ->> 'table'));

-- Where the table is, before an answer reads it as it is now (a row unchanged since the
-- moment, table_at): refuses when the table has writes committed since that the trail does
-- not hold yet (bemi.pending_writes): the answer would show them in the past.
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

-- Where the trail is: checks that changes to revert are all there is of their transactions:
-- none of a transaction stored only in part (the worker stopped in the middle of it).
-- SECURITY DEFINER: it reads bemi.progress for callers that may not; it names only ids given.
CREATE FUNCTION bemi.check_stored(changes regclass, ids bigint[]) RETURNS boolean
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

-- Refuses an answer that would rest on an incomplete image: a change whose values could not
-- be converted (problem), or whose before or after lacks columns the WAL did not have
-- (partial). Given the ids of such changes (NULL: none), raises; else true.
CREATE FUNCTION bemi.refuse_incomplete(ids bigint[]) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF ids IS NOT NULL THEN
    RAISE EXCEPTION 'bemi: changes % have incomplete row images, so the answer would not be exact',
        (SELECT pg_catalog.array_agg(DISTINCT i ORDER BY i) FROM pg_catalog.unnest(ids) AS i)
      USING ERRCODE = 'data_exception',
            DETAIL = 'bemi.changes.problem says what could not be converted; partial = true means an image holds only what the WAL had.';
  END IF;
  RETURN true;
END
$$;

-- An image without the values the trail does not know: "[masked]" by a column rule of
-- bemi.track, "[erased]" by bemi.erase. Typed rows get NULL there. Anything but an object
-- (JSON null: no image) is given back as it is.
CREATE FUNCTION bemi.known_values(image jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE
RETURN CASE WHEN pg_catalog.jsonb_typeof(image) = 'object' THEN
  (SELECT coalesce(pg_catalog.jsonb_object_agg(e.key, e.value), '{}') FROM pg_catalog.jsonb_each(image) AS e
   WHERE e.value NOT IN ('"[masked]"'::jsonb, '"[erased]"'::jsonb)) ELSE image END;

-- A table's own rows, as FROM reads them: an inheritance parent ONLY (its children are
-- tracked and stored under their own names), a partitioned table with its partitions.
CREATE FUNCTION bemi.scan_of(relation regclass) RETURNS text
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT CASE WHEN c.relkind = 'p' THEN relation::text ELSE 'ONLY ' || relation::text END
  FROM pg_catalog.pg_class AS c WHERE c.oid = relation;
END;

-- The WHERE condition matching a table's row t by its primary key to the key of the record r.
CREATE FUNCTION bemi.key_match(key_columns text[], t text, r text) RETURNS text
LANGUAGE sql IMMUTABLE
RETURN (SELECT pg_catalog.string_agg(pg_catalog.format('%I.%I = %I.%I', t, k, r, k), ' AND ')
        FROM pg_catalog.unnest(key_columns) AS k);

-- A primary key as the caller wrote it, read with the types of the table's key columns:
-- {"column": value, ...} as the trail's images hold them (to_jsonb under the settings
-- bemi.store pins), so '007', '7.0', an upper-case UUID or any spelling of a timestamp name
-- the row they mean. One key column: the value as text; several: a JSON array of as many
-- values, in key order. Anything else is an error (22023), never a silent miss.
CREATE FUNCTION bemi.key_values(relation regclass, primary_key text) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET timezone = 'UTC'
AS $$
DECLARE
  keys text[] := bemi.key_columns(relation);
  parts jsonb;
  given jsonb;
  typed jsonb;
BEGIN
  IF primary_key IS NULL THEN
    RAISE EXCEPTION 'bemi: the primary key must not be NULL' USING ERRCODE = 'invalid_parameter_value';
  ELSIF keys IS NULL THEN
    RAISE EXCEPTION 'bemi: % has no primary key, so its rows cannot be named', relation
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Use bemi.table_at(NULL::table, moment).';
  END IF;
  IF pg_catalog.cardinality(keys) = 1 THEN
    given := pg_catalog.jsonb_build_object(keys[1], primary_key);
  ELSE
    BEGIN
      parts := primary_key::jsonb;
    EXCEPTION WHEN data_exception THEN
      parts := NULL;
    END;
    IF pg_catalog.jsonb_typeof(parts) IS DISTINCT FROM 'array' OR pg_catalog.jsonb_array_length(parts) <> pg_catalog.cardinality(keys) THEN
      RAISE EXCEPTION 'bemi: the primary key of % has % columns (%): a key is a JSON array of % values, not %', relation,
          pg_catalog.cardinality(keys), pg_catalog.array_to_string(keys, ', '), pg_catalog.cardinality(keys), pg_catalog.quote_literal(primary_key)
        USING ERRCODE = 'invalid_parameter_value', HINT = 'Give the values in key order, e.g. ''["acme", 7]''.';
    END IF;
    given := (SELECT pg_catalog.jsonb_object_agg(k.name, parts -> (k.ord::integer - 1))
              FROM pg_catalog.unnest(keys) WITH ORDINALITY AS k(name, ord));
  END IF;
  BEGIN
    EXECUTE pg_catalog.format('SELECT pg_catalog.to_jsonb(k.*) FROM pg_catalog.jsonb_populate_record(NULL::%s, $1) AS k', relation)
      INTO typed USING given;
  EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
    RAISE EXCEPTION 'bemi: % is not a primary key of %: %', pg_catalog.quote_literal(primary_key), relation, SQLERRM
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Write each key value as its column''s type reads it.';
  END;
  typed := (SELECT pg_catalog.jsonb_object_agg(k.name, typed -> k.name) FROM pg_catalog.unnest(keys) AS k(name));
  IF EXISTS (SELECT FROM pg_catalog.jsonb_each(typed) AS e WHERE e.value = 'null') THEN
    RAISE EXCEPTION 'bemi: % is not a primary key of %: a key has no NULL values', pg_catalog.quote_literal(primary_key), relation
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  RETURN typed;
END
$$;

-- A primary key as the caller wrote it, in the text form the trail writes (bemi.changes.primary_key).
CREATE FUNCTION bemi.trail_key(relation regclass, primary_key text) RETURNS text
LANGUAGE sql STABLE
RETURN bemi.image_key(bemi.key_values(relation, primary_key), bemi.key_columns(relation));

-- What the trail needs to know of a table's key, merged into a history_of for row_history: to
-- find a key by value where its text is not unique, a key with a numeric column ('1' and '1.0'
-- are one key) is compared as a number (one column) or as JSON (several); "key_deferrable":
-- two rows may share the key inside a transaction (bemi.shared_key_event). Without it, a change
-- that took the key and one that later gave it up in one transaction are of one row.
CREATE FUNCTION bemi.key_form(relation regclass) RETURNS jsonb
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT CASE WHEN NOT pg_catalog.bool_or(coalesce(nullif(t.typbasetype, 0), t.oid) = 'pg_catalog.numeric'::pg_catalog.regtype) THEN '{}'::jsonb
    WHEN pg_catalog.count(*) = 1 THEN '{"key_by_value": "number"}' ELSE '{"key_by_value": "array"}' END
    || CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_index AS i WHERE i.indrelid = relation AND i.indisprimary AND NOT i.indimmediate)
       THEN '{"key_deferrable": true}'::jsonb ELSE '{}' END
  FROM pg_catalog.unnest(bemi.key_columns(relation)) AS k(name)
  JOIN pg_catalog.pg_attribute AS a ON a.attrelid = relation AND a.attname = k.name
  JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid;
END;

-- Whether two keys in the trail's text form name the same row of a table: equal texts, or
-- equal values where the text is not unique (numeric columns).
CREATE FUNCTION bemi.same_key(relation regclass, a text, b text) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF a IS NULL OR b IS NULL THEN
    RETURN false;
  ELSIF a = b OR NOT bemi.key_form(relation) ? 'key_by_value' THEN
    RETURN a = b;
  END IF;
  RETURN bemi.key_values(relation, a) = bemi.key_values(relation, b);
EXCEPTION WHEN invalid_parameter_value THEN
  RETURN false; -- a key written under another key definition
END
$$;

-- The latest (latest = true: at or before at) or the first (after at) change of the row with a
-- primary key: one made under that key, one that moved the key away, or a TRUNCATE. Each
-- branch reads one entry of its index; the other direction's branches are not run.
-- database_name: only changes from this database (NULL: any). through: the moment is the
-- commit of the change with this id (bemi.transaction_moment): of the changes committed at
-- at, only those up to it count as at or before (NULL: all of them).
CREATE FUNCTION bemi.row_event(database_name text, schema_name text, table_name text, primary_key text, at timestamptz, latest boolean,
                               through bigint DEFAULT NULL)
RETURNS TABLE (id bigint, operation text, primary_key text, before jsonb, after jsonb, incomplete boolean,
               committed_at timestamptz, previous_key text)
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT e.id, e.operation, e.primary_key, e.before, e.after, e.incomplete, e.committed_at, e.previous_key FROM (
    (SELECT c.id, c.committed_at, c.operation, c.primary_key, c.before, c.after, c.problem IS NOT NULL OR c.partial AS incomplete, c.previous_key
     FROM bemi.changes AS c
     WHERE c.schema = schema_name AND c."table" = table_name AND c.primary_key = row_event.primary_key AND latest AND c.committed_at <= at AND (through IS NULL OR c.committed_at < at OR c.id <= through)
       AND (database_name IS NULL OR c.database = database_name)
     ORDER BY c.committed_at DESC, c.id DESC LIMIT 1)
    UNION ALL
    (SELECT c.id, c.committed_at, c.operation, c.primary_key, c.before, c.after, c.problem IS NOT NULL OR c.partial AS incomplete, c.previous_key
     FROM bemi.changes AS c
     WHERE c.schema = schema_name AND c."table" = table_name AND c.primary_key = row_event.primary_key AND NOT latest AND c.committed_at >= at AND (c.committed_at > at OR c.id > through)
       AND (database_name IS NULL OR c.database = database_name)
     ORDER BY c.committed_at, c.id LIMIT 1)
    UNION ALL
    (SELECT c.id, c.committed_at, c.operation, c.primary_key, c.before, c.after, c.problem IS NOT NULL OR c.partial AS incomplete, c.previous_key
     FROM bemi.changes AS c
     WHERE c.schema = schema_name AND c."table" = table_name AND c.previous_key = row_event.primary_key AND latest AND c.committed_at <= at AND (through IS NULL OR c.committed_at < at OR c.id <= through)
       AND (database_name IS NULL OR c.database = database_name)
     ORDER BY c.committed_at DESC, c.id DESC LIMIT 1)
    UNION ALL
    (SELECT c.id, c.committed_at, c.operation, c.primary_key, c.before, c.after, c.problem IS NOT NULL OR c.partial AS incomplete, c.previous_key
     FROM bemi.changes AS c
     WHERE c.schema = schema_name AND c."table" = table_name AND c.previous_key = row_event.primary_key AND NOT latest AND c.committed_at >= at AND (c.committed_at > at OR c.id > through)
       AND (database_name IS NULL OR c.database = database_name)
     ORDER BY c.committed_at, c.id LIMIT 1)
    UNION ALL
    (SELECT c.id, c.committed_at, c.operation, c.primary_key, c.before, c.after, c.problem IS NOT NULL OR c.partial AS incomplete, c.previous_key
     FROM bemi.changes AS c
     WHERE c.schema = schema_name AND c."table" = table_name AND c.operation = 'TRUNCATE' AND latest AND c.committed_at <= at AND (through IS NULL OR c.committed_at < at OR c.id <= through)
       AND (database_name IS NULL OR c.database = database_name)
     ORDER BY c.committed_at DESC, c.id DESC LIMIT 1)
    UNION ALL
    (SELECT c.id, c.committed_at, c.operation, c.primary_key, c.before, c.after, c.problem IS NOT NULL OR c.partial AS incomplete, c.previous_key
     FROM bemi.changes AS c
     WHERE c.schema = schema_name AND c."table" = table_name AND c.operation = 'TRUNCATE' AND NOT latest AND c.committed_at >= at AND (c.committed_at > at OR c.id > through)
       AND (database_name IS NULL OR c.database = database_name)
     ORDER BY c.committed_at, c.id LIMIT 1)
  ) AS e
  ORDER BY CASE WHEN latest THEN e.committed_at END DESC, CASE WHEN latest THEN e.id END DESC,
    CASE WHEN NOT latest THEN e.committed_at END, CASE WHEN NOT latest THEN e.id END
  LIMIT 1;
END;

-- A key and every text of the table's changes equal to it as a number ('1', '1.0') or as JSON
-- (several columns): a scan of the table's changes, so a function of its own, planned only for
-- keys with a numeric column (planned inside trail_keys, the scan of a large trail made every
-- row_at pay for compiling it: JIT, 0.8 s at 10M changes, though it never ran).
CREATE FUNCTION bemi.keys_by_value(history jsonb, primary_key text) RETURNS text[]
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT ARRAY[keys_by_value.primary_key] || coalesce(pg_catalog.array_agg(DISTINCT k.key) FILTER (WHERE k.key <> keys_by_value.primary_key), '{}')
  FROM bemi.changes AS c, LATERAL (VALUES (c.primary_key), (c.previous_key)) AS k(key)
  WHERE c.schema = history ->> 'schema' AND c."table" = history ->> 'table'
    AND (NOT history ? 'database' OR c.database = history ->> 'database')
    AND CASE
      WHEN history ->> 'key_by_value' = 'number' THEN CASE
        WHEN k.key ~ '^([-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?|NaN|-?Infinity)$'
          AND keys_by_value.primary_key ~ '^([-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?|NaN|-?Infinity)$'
        THEN k.key::numeric = keys_by_value.primary_key::numeric ELSE false END
      WHEN k.key LIKE '[%' AND keys_by_value.primary_key LIKE '[%' THEN k.key::jsonb = keys_by_value.primary_key::jsonb
      ELSE false END;
END;

-- Where the trail is: the texts under which the trail holds a key given in its text form
-- (bemi.trail_key): that text, and where the history says the key is compared by value
-- (bemi.key_form), every text of the table's changes equal to it (bemi.keys_by_value).
CREATE FUNCTION bemi.trail_keys(history jsonb, primary_key text) RETURNS text[]
LANGUAGE sql STABLE
RETURN CASE WHEN history ->> 'key_by_value' IS NULL THEN ARRAY[primary_key] ELSE bemi.keys_by_value(history, primary_key) END;

-- Where the trail is: the latest (or first, latest = false) change of a row under any of the
-- texts its key has in the trail (bemi.trail_keys), as JSON (bemi.row_event's columns); NULL.
-- A latest change at or before the end of the last gap (history's "covered_from", set by
-- row_history) is no answer: a change in the gap may have followed it.
CREATE FUNCTION bemi.key_event(history jsonb, keys text[], at timestamptz, latest boolean, through bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
  event jsonb;
  found jsonb;
  key text;
BEGIN
  FOREACH key IN ARRAY keys LOOP
    SELECT pg_catalog.to_jsonb(e.*) INTO found
    FROM bemi.row_event(history ->> 'database', history ->> 'schema', history ->> 'table', key, at, latest, through) AS e;
    IF event IS NULL OR (latest AND ((found ->> 'committed_at')::timestamptz, (found ->> 'id')::bigint)
                                   > ((event ->> 'committed_at')::timestamptz, (event ->> 'id')::bigint))
       OR (NOT latest AND ((found ->> 'committed_at')::timestamptz, (found ->> 'id')::bigint)
                        < ((event ->> 'committed_at')::timestamptz, (event ->> 'id')::bigint)) THEN
      event := coalesce(found, event);
    END IF;
  END LOOP;
  IF latest AND (event ->> 'committed_at')::timestamptz <= (history ->> 'covered_from')::timestamptz THEN
    RETURN NULL;
  END IF;
  RETURN event;
END
$$;

-- Where the trail is: two rows can have one key for a moment inside a transaction (a swap
-- under a DEFERRABLE key). When the latest change of a key up to a moment took it from a row
-- (a DELETE, a move away), another row of the same transaction that took the key (and did not
-- give it up) has it after that transaction; when the first change after a moment gave the key
-- to a row, a row of the same transaction that gave the key up had it before. That change, or
-- NULL when there is none; "alike": true when the rows are alike in every value, so the trail
-- cannot tell whether one row took the key and gave it up or two rows shared it.
CREATE FUNCTION bemi.shared_key_event(history jsonb, keys text[], event jsonb) RETURNS jsonb
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT pg_catalog.to_jsonb(e.*) - 'alike' || CASE WHEN event ? 'later' THEN '{"later": true}'::jsonb ELSE '{}' END
    || CASE WHEN e.alike THEN pg_catalog.jsonb_build_object('alike', true, 'transaction_first', e.first_id) ELSE '{}' END
  FROM (SELECT c.id, c.operation, c.primary_key, c.before, c.after, c.problem IS NOT NULL OR c.partial AS incomplete,
          c.committed_at, c.previous_key, CASE WHEN event ? 'later' THEN c.before = m.after ELSE c.after = m.before END AS alike,
          (SELECT pg_catalog.min(f.id) FROM bemi.changes AS f WHERE f.committed_at = m.committed_at AND f.transaction_id = m.transaction_id) AS first_id
        FROM bemi.changes AS c, bemi.changes AS m
        WHERE m.id = (event ->> 'id')::bigint AND m.committed_at = (event ->> 'committed_at')::timestamptz
          AND c.committed_at = m.committed_at AND c.transaction_id = m.transaction_id AND c.id <> m.id
          AND c.schema = history ->> 'schema' AND c."table" = history ->> 'table'
          AND (NOT history ? 'database' OR c.database = history ->> 'database')
          AND CASE WHEN NOT event ? 'later'
            -- the latest gave the key up: a row that took it, after the latest or before it
            THEN (event ->> 'operation' = 'DELETE' OR (event ->> 'operation' = 'UPDATE' AND event ->> 'primary_key' <> ALL (keys)))
              AND c.primary_key = ANY (keys) AND c.operation IN ('CREATE', 'UPDATE')
              AND NOT EXISTS (SELECT FROM bemi.changes AS g WHERE g.committed_at = c.committed_at AND g.transaction_id = c.transaction_id
                              AND g.id > c.id AND g.id <> m.id AND g.before = c.after AND g.schema = c.schema AND g."table" = c."table")
            -- the first took the key: a row of the transaction that gave it up (its before)
            ELSE (event ->> 'operation' = 'CREATE' OR (event ->> 'operation' = 'UPDATE' AND event ->> 'previous_key' IS NOT NULL
                                                         AND event ->> 'primary_key' = ANY (keys)))
              AND (c.previous_key = ANY (keys) OR (c.operation = 'DELETE' AND c.primary_key = ANY (keys)))
              AND NOT EXISTS (SELECT FROM bemi.changes AS g WHERE g.committed_at = c.committed_at AND g.transaction_id = c.transaction_id
                              AND g.id < c.id AND g.id <> m.id AND g.after = c.before AND g.schema = c.schema AND g."table" = c."table") END
        ORDER BY 9, CASE WHEN event ? 'later' THEN c.id END, c.id DESC LIMIT 1) AS e;
END;

-- Where the trail is: a change of a row's key (bemi.key_event), or the change of another row
-- of its transaction that had the key (bemi.shared_key_event) where the key was shared. For
-- rows alike in every value, whether a row had the key when the transaction began tells one
-- row that took the key and gave it up from two that shared it; where nothing tells, the
-- change is marked "alike" (row_from refuses).
CREATE FUNCTION bemi.shared_key_settled(history jsonb, keys text[], event jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  shared jsonb;
  before_it jsonb;
BEGIN
  IF NOT history ? 'key_deferrable' OR NOT (CASE WHEN event ? 'later' THEN event ->> 'operation' = 'CREATE'
                 OR (event ->> 'operation' = 'UPDATE' AND event ->> 'previous_key' IS NOT NULL AND event ->> 'primary_key' = ANY (keys))
               ELSE event ->> 'operation' = 'DELETE' OR (event ->> 'operation' = 'UPDATE' AND event ->> 'primary_key' <> ALL (keys)) END) THEN
    RETURN event;
  END IF;
  shared := bemi.shared_key_event(history, keys, event);
  IF shared ? 'alike' THEN
    before_it := bemi.key_event(history, keys, (shared ->> 'committed_at')::timestamptz, true, (shared ->> 'transaction_first')::bigint - 1);
    IF before_it ->> 'operation' IN ('CREATE', 'UPDATE') AND before_it ->> 'primary_key' = ANY (keys) THEN
      shared := shared - 'alike';
    ELSIF before_it IS NOT NULL AND NOT (before_it ->> 'operation' = 'TRUNCATE' AND before_it -> 'before' ? 'partition') THEN
      shared := NULL;  -- a partition truncated, detached or attached need not have held the row: still alike
    END IF;
  END IF;
  RETURN coalesce(shared - 'transaction_first' - 'first_id', event);
END
$$;

-- Where the trail is: what it knows of one row at a moment, for row_from: the latest change
-- of the row at or before the moment, else the first after it ("later": true), else {}.
-- Where the latest are partitions truncated, detached or attached (bemi.partition_event),
-- also those ("partition_events", newest first, each with "moved_since": the partitions
-- detached or attached after it) and the change of the row before them ("prior"), for
-- row_from to tell whether the row was in them.
-- Generic plans: planning the six index lookups for every partition of the trail on each
-- call would cost more than running them (partitions are pruned when the plan starts).
CREATE FUNCTION bemi.row_history(history jsonb, primary_key text, at timestamptz, through bigint DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  keys text[];
  event jsonb;
  moved jsonb := '[]';
BEGIN
  PERFORM bemi.check_trail(history, at);
  history := history || pg_catalog.jsonb_build_object('covered_from', bemi.trail_covered_from(history));
  keys := bemi.trail_keys(history, primary_key);
  event := bemi.key_event(history, keys, at, true, through);
  WHILE event ->> 'operation' = 'TRUNCATE' AND event -> 'before' ? 'partition' LOOP
    moved := moved || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object('id', event -> 'id', 'before', event -> 'before',
      'moved_since', (SELECT coalesce(pg_catalog.jsonb_agg(DISTINCT c.before - 'event'), '[]') FROM bemi.changes AS c
        WHERE c.schema = history ->> 'schema' AND c."table" = history ->> 'table' AND c.operation = 'TRUNCATE'
          AND (NOT history ? 'database' OR c.database = history ->> 'database')
          AND (c.committed_at, c.id) > ((event ->> 'committed_at')::timestamptz, (event ->> 'id')::bigint)
          AND c.before ->> 'event' IN ('detach', 'attach'))));
    event := bemi.key_event(history, keys, (event ->> 'committed_at')::timestamptz, true, (event ->> 'id')::bigint - 1);
  END LOOP;
  event := bemi.shared_key_settled(history, keys, event);
  IF moved <> '[]' THEN
    event := coalesce(bemi.shared_key_settled(history, keys, bemi.key_event(history, keys, at, false, through) || '{"later": true}'), '{}')
      || pg_catalog.jsonb_build_object('partition_events', moved, 'prior', event - 'committed_at');
  ELSIF event IS NULL THEN
    event := bemi.shared_key_settled(history, keys, bemi.key_event(history, keys, at, false, through) || '{"later": true}');
  END IF;
  RETURN coalesce(event - 'committed_at' - 'previous_key', '{}');
END
$$;

-- Where the table is: whether a row image of a partitioned table was in one of its partitions
-- (part) at a partition event, told by the partitions' bounds now where they cannot have
-- changed since: the partition's own, or another's that holds the row (partitions are
-- disjoint). moved: the partitions detached or attached since, whose bounds may differ now (and
-- a DEFAULT partition's bounds are what the others leave). NULL when it cannot be told: the
-- partitions are gone or moved, or bounded by an expression (code of the table's owner, which
-- time travel does not run).
CREATE FUNCTION bemi.in_partition(relation regclass, part jsonb, image jsonb, moved jsonb) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  target regclass := pg_catalog.to_regclass(pg_catalog.format('%I.%I', part ->> 'partition_schema', part ->> 'partition'));
  candidate record;
  inside boolean;
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_partition_tree(relation) AS t JOIN pg_catalog.pg_partitioned_table AS p ON p.partrelid = t.relid
             WHERE p.partexprs IS NOT NULL) THEN
    RETURN NULL;
  END IF;
  FOR candidate IN
    SELECT t.relid, n.nspname, c.relname, pg_catalog.pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' AS is_default
    FROM pg_catalog.pg_partition_tree(relation) AS t JOIN pg_catalog.pg_class AS c ON c.oid = t.relid
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    WHERE t.isleaf AND t.relid <> relation
    ORDER BY t.relid IS DISTINCT FROM target  -- the partition itself first
  LOOP
    CONTINUE WHEN candidate.is_default OR moved @> pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
      'partition_schema', candidate.nspname, 'partition', candidate.relname));
    EXECUTE pg_catalog.format('SELECT coalesce((%s), false) FROM pg_catalog.jsonb_populate_record(NULL::%s, $1) AS r',
        coalesce(pg_catalog.pg_get_partition_constraintdef(candidate.relid), 'true'), relation)
      INTO inside USING image;
    IF candidate.relid = target THEN
      RETURN inside;
    ELSIF inside THEN
      RETURN false; -- in another partition
    END IF;
  END LOOP;
  RETURN NULL;
END
$$;

-- Where the table is: what partition events (row_history's "partition_events", newest first)
-- did to a row, given its change before them ("prior"): 'gone' (it was in a partition
-- truncated or detached, or was not there and none came in), 'kept' (it was there and in none
-- of them), NULL when that cannot be told (no change before them, a partition whose bounds
-- may have changed): row_from then asks what came after.
CREATE FUNCTION bemi.partition_verdict(relation regclass, primary_key text, event jsonb) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  prior jsonb := nullif(event -> 'prior', 'null');
  moved jsonb;
  present boolean := prior IS NOT NULL AND prior ->> 'operation' IN ('CREATE', 'UPDATE')
    AND bemi.same_key(relation, prior ->> 'primary_key', primary_key);
  inside boolean;
BEGIN
  IF prior IS NULL OR prior ? 'alike' THEN
    RETURN NULL; -- no change of the row before them (it may be from before tracking), or not one told apart
  END IF;
  FOR moved IN SELECT m.value FROM pg_catalog.jsonb_array_elements(event -> 'partition_events') WITH ORDINALITY AS m(value, n)
               ORDER BY m.n DESC LOOP
    IF moved -> 'before' ->> 'event' = 'attach' THEN
      IF NOT present THEN
        RETURN NULL; -- it may have come in with the partition
      END IF;
    ELSIF present THEN
      inside := bemi.in_partition(relation, moved -> 'before', prior -> 'after', moved -> 'moved_since');
      IF inside IS NULL THEN
        RETURN NULL;
      END IF;
      present := NOT inside;
    END IF;
  END LOOP;
  RETURN CASE WHEN present THEN 'kept' ELSE 'gone' END;
END
$$;

-- Where the table is: the row with a primary key at a moment, from what row_history found.
CREATE FUNCTION bemi.row_from(relation regclass, primary_key text, at timestamptz, event jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  keys text[] := bemi.key_columns(relation);
  result jsonb;
BEGIN
  primary_key := bemi.trail_key(relation, primary_key);
  IF event ? 'partition_events' THEN
    CASE bemi.partition_verdict(relation, primary_key, event)
      WHEN 'gone' THEN
        RETURN NULL;
      WHEN 'kept' THEN
        PERFORM bemi.refuse_incomplete(CASE WHEN (event -> 'prior' ->> 'incomplete')::boolean THEN ARRAY[(event -> 'prior' ->> 'id')::bigint] END);
        RETURN event -> 'prior' -> 'after';
      ELSE
        event := event - 'partition_events' - 'prior';
    END CASE;
  END IF;
  IF event ? 'alike' THEN
    RAISE EXCEPTION 'bemi: the row % of % at % cannot be told from another alike in every value that shared its key inside one transaction (change %)',
        primary_key, relation, at, event ->> 'id'
      USING ERRCODE = 'feature_not_supported', HINT = 'bemi.table_at tells the rows by their number: use it for this moment.';
  END IF;
  IF event ? 'id' AND NOT event ? 'later' THEN
    -- The row as the latest change at or before the moment left it.
    IF event ->> 'operation' IN ('DELETE', 'TRUNCATE') OR NOT bemi.same_key(relation, event ->> 'primary_key', primary_key) THEN
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
    IF event ->> 'operation' = 'CREATE' OR NOT bemi.same_key(relation, bemi.image_key(event -> 'before', keys), primary_key) THEN
      RETURN NULL;
    END IF;
    PERFORM bemi.refuse_incomplete(CASE WHEN (event ->> 'incomplete')::boolean THEN ARRAY[(event ->> 'id')::bigint] END);
    RETURN event -> 'before';
  END IF;
  -- Unchanged to this day (unless a write not yet ingested changed it).
  PERFORM bemi.check_pending(relation);
  EXECUTE pg_catalog.format('SELECT pg_catalog.to_jsonb(t.*) FROM %s AS t, pg_catalog.jsonb_populate_record(NULL::%s, $1) AS k WHERE %s',
      bemi.scan_of(relation), relation, bemi.key_match(keys, 't', 'k'))
    INTO result
    USING CASE WHEN pg_catalog.cardinality(keys) = 1 THEN pg_catalog.jsonb_build_object(keys[1], primary_key)
      ELSE (SELECT pg_catalog.jsonb_object_agg(k.name, primary_key::jsonb -> (k.ord::integer - 1))
            FROM pg_catalog.unnest(keys) WITH ORDINALITY AS k(name, ord)) END;
  RETURN result;
END
$$;

CREATE FUNCTION bemi.row_at(relation regclass, primary_key text, at timestamptz) RETURNS jsonb
LANGUAGE sql STABLE
RETURN (SELECT bemi.row_from(relation, k.key, at, bemi.row_history(bemi.history_of(relation, at) || bemi.key_form(relation), k.key, at))
        FROM (SELECT bemi.trail_key(relation, primary_key) AS key) AS k);

COMMENT ON FUNCTION bemi.row_at(regclass, text, timestamptz) IS
  'A row (as JSON, like bemi.changes.after) as it was after every transaction committed at or before a moment; NULL when it did not exist.';

-- After an error converting a value of the trail into a table's row type: unless it is one of
-- bemi's own, the error bemi gives for it (a column was retyped since, or holds values the
-- trail does not: 22000 with the conversion's message). Returns when the error is bemi's.
CREATE FUNCTION bemi.unfit_value(message text, relation regclass) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF message LIKE 'bemi:%' THEN
    RETURN;
  END IF;
  RAISE EXCEPTION 'bemi: a value in the trail does not fit %: %', coalesce(relation::text, 'the table as it is now'), message
    USING ERRCODE = 'data_exception',
          HINT = 'A column was retyped since the change: bemi.row_at and bemi.changes give the values as they were stored.';
END
$$;

-- A count of copies of a row, checked: below zero the trail and the table disagree.
CREATE FUNCTION bemi.check_count(n numeric) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF n < 0 THEN
    RAISE EXCEPTION 'bemi: the table holds fewer copies of a row than its trail says: changes are not ingested yet'
      USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Wait for bemi-pg worker or run SELECT bemi.ingest(), then ask again.';
  END IF;
  RETURN n > 0;
END
$$;

-- Whether a row had a key at a moment, from how many rows have it now less what the changes
-- since did (1 or 0), checked: anything else, or a row without the change that took the key
-- from it, and the trail and the table disagree.
CREATE FUNCTION bemi.check_presence(n integer, known boolean) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF n NOT IN (0, 1) OR (n = 1 AND NOT known) THEN
    RAISE EXCEPTION 'bemi: the table and its trail disagree on a key: changes are not ingested yet'
      USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Wait for bemi-pg worker or run SELECT bemi.ingest(), then ask again.';
  END IF;
  RETURN n = 1;
END
$$;

-- The table of a row type (the typed NULL table_at and table_from are given), or an error.
CREATE FUNCTION bemi.table_of(row_type regtype) RETURNS regclass
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  table_oid regclass := (SELECT nullif(t.typrelid, 0) FROM pg_catalog.pg_type AS t WHERE t.oid = row_type);
BEGIN
  IF table_oid IS NULL OR (SELECT c.relkind FROM pg_catalog.pg_class AS c WHERE c.oid = table_oid) NOT IN ('r', 'p') THEN
    RAISE EXCEPTION 'bemi: table_at needs the row type of a table, not %', row_type
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass a typed NULL: SELECT * FROM bemi.table_at(NULL::todo, moment).';
  END IF;
  RETURN table_oid;
END
$$;

-- Where the trail is: the changes of a history_of's table after a moment, for table_from
-- where the table is (bemi_pg copies them into a temporary table there).
CREATE FUNCTION bemi.table_history(history jsonb, at timestamptz, through bigint DEFAULT NULL) RETURNS SETOF bemi.changes
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM bemi.check_trail(history, at);
  RETURN QUERY SELECT c.* FROM bemi.changes AS c
    WHERE c.schema = history ->> 'schema' AND c."table" = history ->> 'table'
      AND c.committed_at >= at AND (c.committed_at > at OR c.id > through)
      AND (NOT history ? 'database' OR c.database = history ->> 'database');
END
$$;

-- For table_from's pages: that a row (alias) has a key after the key values of after ($5 of
-- table_from's query, an object of the key columns), compared as the key's types in the key's
-- order (one row comparison, which the key's index serves); true without after.
CREATE FUNCTION bemi.key_after(alias text, keys text[], after jsonb, relation regclass) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN after IS NULL THEN 'true' ELSE pg_catalog.format('(%s) > (SELECT %s FROM pg_catalog.jsonb_populate_record(NULL::%s, $5) AS a)',
  (SELECT pg_catalog.string_agg(pg_catalog.format('%I.%I', alias, k), ', ') FROM pg_catalog.unnest(keys) AS k),
  (SELECT pg_catalog.string_agg(pg_catalog.format('a.%I', k), ', ') FROM pg_catalog.unnest(keys) AS k),
  relation) END;

-- Where the table is: the table as of a moment, from the table now and the changes after the
-- moment, read from changes (bemi.changes, or a copy of table_history's rows). With after and
-- size (a table with a key), a page of it: rows whose key comes after after's key values (all
-- rows for NULL), and of the rows that are still as they were only the size first in key order,
-- read along the key's index, so a page costs what the changes since the moment cost, not what
-- the table does (the caller orders the rows and takes the size first of them).
CREATE FUNCTION bemi.table_from(relation anyelement, at timestamptz, changes regclass, through bigint DEFAULT NULL,
                                after jsonb DEFAULT NULL, size integer DEFAULT NULL) RETURNS SETOF anyelement
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  table_oid regclass := bemi.table_of(pg_catalog.pg_typeof(relation));
  schema_name text;
  table_name text;
  keys text[] := bemi.key_columns(table_oid);
  truncated bigint[];
  failure text;
BEGIN
  SELECT n.nspname, c.relname INTO schema_name, table_name
  FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace WHERE c.oid = table_oid;
  PERFORM bemi.check_pending(table_oid);  -- the table now is where the answer starts

  EXECUTE pg_catalog.format('SELECT pg_catalog.array_agg(c.id ORDER BY c.id) FROM %s AS c '
      'WHERE c.schema = $1 AND c."table" = $2 AND c.operation = ''TRUNCATE'' AND c.committed_at >= $3 AND (c.committed_at > $3 OR c.id > $4)', changes)
    INTO truncated USING schema_name, table_name, at, through;
  IF truncated IS NOT NULL THEN
    RAISE EXCEPTION 'bemi: % was truncated after % (changes %), and the rows it held are not in the trail', table_oid, at, truncated
      USING ERRCODE = 'feature_not_supported',
            HINT = 'TRUNCATE does not write its rows to the WAL, nor does a partition detached or attached (a TRUNCATE whose before names the partition); ask for a moment after the last of them.';
  END IF;

  BEGIN
  IF keys IS NULL THEN
    -- No key: the rows as a multiset, the table now, minus what later changes added, plus
    -- what they removed (compared as JSON of the typed row, leaving out generated columns and
    -- the columns the trail does not hold exactly: masked and ignored ones). A row that is in
    -- the table now is given as it is now; one that comes from the trail has NULL there.
    RETURN QUERY EXECUTE pg_catalog.format($q$
      WITH later AS (
        SELECT c.before, c.after FROM %3$s AS c
        WHERE c.schema = $1 AND c."table" = $2 AND c.committed_at >= $3 AND (c.committed_at > $3 OR c.id > $4)
      ), excluded AS (
        SELECT coalesce(pg_catalog.array_agg(a.attname::text), '{}') || bemi.masked_columns(%2$s) || bemi.ignored_columns(%2$s) AS names
        FROM pg_catalog.pg_attribute AS a WHERE a.attrelid = %2$s AND a.attgenerated <> '' AND NOT a.attisdropped
      ), live AS (
        SELECT t AS whole, v.image, pg_catalog.row_number() OVER (PARTITION BY v.image) AS copy FROM %4$s AS t,
          LATERAL (SELECT pg_catalog.to_jsonb(t.*) OPERATOR(pg_catalog.-) (TABLE excluded) AS image) AS v
      ), counted AS (
        SELECT v.image, pg_catalog.sum(v.n) AS n FROM (
          SELECT w.image, 1 AS n FROM live AS w
          UNION ALL
          SELECT pg_catalog.to_jsonb(r.*) OPERATOR(pg_catalog.-) (TABLE excluded), -1
          FROM later AS l, pg_catalog.jsonb_populate_record(NULL::%1$s, bemi.known_values(l.after)) AS r WHERE l.after <> '{}'
          UNION ALL
          SELECT pg_catalog.to_jsonb(r.*) OPERATOR(pg_catalog.-) (TABLE excluded), 1
          FROM later AS l, pg_catalog.jsonb_populate_record(NULL::%1$s, bemi.known_values(l.before)) AS r WHERE l.before <> '{}'
        ) AS v GROUP BY v.image
      )
      SELECT (x.rec).* FROM counted AS c CROSS JOIN pg_catalog.generate_series(1, c.n::bigint) AS g(copy)
        LEFT JOIN live AS w ON w.image = c.image AND w.copy = g.copy,
        LATERAL (SELECT CASE WHEN w.copy IS NULL THEN pg_catalog.jsonb_populate_record(NULL::%1$s, c.image) ELSE w.whole END AS rec
                 OFFSET 0) AS x
      WHERE bemi.check_count(c.n)$q$, table_oid, table_oid::oid, changes, bemi.scan_of(table_oid))
      USING schema_name, table_name, at, through;
    RETURN;
  END IF;

  -- With a key: per key a later change touched, whether a row had it at the moment (it has one
  -- now, less the changes since that gave it, plus those that took it away: two rows can share
  -- a key for a moment, as in a swap under a DEFERRABLE key), and that row as the first change
  -- since that took the key from a row that had it then (its before image: a row that got the
  -- key after the moment has an earlier change that gave it that image); every other row as
  -- it is now. One query, planned per call (the row type is the caller's); keys are pulled out
  -- of the images once.
  RETURN QUERY EXECUTE pg_catalog.format($q$
    WITH later AS (
      SELECT c.id, c.committed_at, c.before, c.after, c.problem IS NOT NULL OR c.partial AS incomplete
      FROM %5$s AS c WHERE c.schema = $1 AND c."table" = $2 AND c.committed_at >= $3 AND (c.committed_at > $3 OR c.id > $4)
    ), sides AS (
      SELECT l.committed_at, l.id, -1 AS delta, l.before AS image, l.incomplete, %2$s FROM later AS l,
        pg_catalog.jsonb_populate_record(NULL::%1$s, l.before) AS r WHERE l.before <> '{}' AND %8$s
      UNION ALL
      SELECT l.committed_at, l.id, 1, l.after, false, %2$s FROM later AS l,
        pg_catalog.jsonb_populate_record(NULL::%1$s, l.after) AS r WHERE l.after <> '{}' AND %8$s
    ), touched AS (
      SELECT %3$s, pg_catalog.sum(s.delta) AS net FROM sides AS s GROUP BY %3$s
    ), firsts AS (
      -- A change that takes the key from a row that got it after the moment (an earlier change
      -- gave that key that image) is not the one, unless the two rows are alike in every value:
      -- then either is. Told in one sort of the sides, not a search of them per change.
      SELECT DISTINCT ON (%3$s) %3$s, s.id, s.image, s.incomplete FROM (
        SELECT s.*, pg_catalog.bool_or(s.delta = 1) OVER (PARTITION BY %3$s, s.image ORDER BY s.committed_at, s.id, s.delta
                                                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS given_after
        FROM sides AS s) AS s
      WHERE s.delta = -1
      ORDER BY %3$s, coalesce(s.given_after, false), s.committed_at, s.id
    ), used AS (
      SELECT bemi.known_values(f.image) AS image, pg_catalog.array_agg(f.id) FILTER (WHERE f.incomplete) OVER () AS incomplete
      FROM touched AS s LEFT JOIN firsts AS f ON %7$s
      WHERE bemi.check_presence(((EXISTS (SELECT FROM %6$s AS t WHERE %4$s))::integer - s.net)::integer, f.id IS NOT NULL)
    )
    (SELECT t.* FROM %6$s AS t WHERE %9$s AND NOT EXISTS (SELECT FROM touched AS s WHERE %4$s)%10$s)
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
    changes, bemi.scan_of(table_oid),
    (SELECT pg_catalog.string_agg(pg_catalog.format('f.bemi_key_%1$s = s.bemi_key_%1$s', k.ord), ' AND ')
     FROM pg_catalog.unnest(keys) WITH ORDINALITY AS k(name, ord)),
    bemi.key_after('r', keys, after, table_oid), bemi.key_after('t', keys, after, table_oid),
    CASE WHEN size IS NOT NULL THEN pg_catalog.format(' ORDER BY %s LIMIT $6',
      (SELECT pg_catalog.string_agg(pg_catalog.format('t.%I', k), ', ') FROM pg_catalog.unnest(keys) AS k)) ELSE '' END)
    USING schema_name, table_name, at, through, after, size;
  EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
    GET STACKED DIAGNOSTICS failure = MESSAGE_TEXT;
    PERFORM bemi.unfit_value(failure, table_oid);
    RAISE;
  END;
END
$$;

CREATE FUNCTION bemi.table_at(relation anyelement, at timestamptz) RETURNS SETOF anyelement
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM bemi.check_trail(bemi.history_of(bemi.table_of(pg_catalog.pg_typeof(relation)), at), at);
  RETURN QUERY SELECT * FROM bemi.table_from(relation, at, 'bemi.changes');
END
$$;

COMMENT ON FUNCTION bemi.table_at(anyelement, timestamptz) IS
  'A whole table as typed rows, as it was after every transaction committed at or before a moment: SELECT * FROM bemi.table_at(NULL::todo, moment).';

-- A page of table_at in primary key order: the size first rows whose key comes after the key
-- values of after (an object of the key columns; NULL: from the first row). Its cost is the
-- changes since the moment and one page of the table's key index, whatever the table's size
-- (bemi-pg serve's table page). A table without a key has no order to page by.
CREATE FUNCTION bemi.table_page_at(relation anyelement, at timestamptz, after jsonb, size integer) RETURNS SETOF anyelement
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  table_oid regclass := bemi.table_of(pg_catalog.pg_typeof(relation));
  keys text[] := bemi.key_columns(table_oid);
BEGIN
  IF size IS NULL OR size < 1 THEN
    RAISE EXCEPTION 'bemi: a page holds at least one row, not %', coalesce(size::text, 'NULL')
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass the number of rows a page holds, such as 50.';
  END IF;
  IF keys IS NULL THEN
    RAISE EXCEPTION 'bemi: % has no primary key to page by', table_oid
      USING ERRCODE = 'feature_not_supported', HINT = 'Read the whole table: SELECT * FROM bemi.table_at(NULL::t, moment).';
  END IF;
  PERFORM bemi.check_trail(bemi.history_of(table_oid, at), at);
  RETURN QUERY EXECUTE pg_catalog.format('SELECT t.* FROM bemi.table_from($1, $2, %L, NULL, $3, $4) AS t ORDER BY %s LIMIT $4',
      'bemi.changes', (SELECT pg_catalog.string_agg(pg_catalog.format('t.%I', k), ', ') FROM pg_catalog.unnest(keys) AS k))
    USING relation, at, after, size;
END
$$;

COMMENT ON FUNCTION bemi.table_page_at(anyelement, timestamptz, jsonb, integer) IS
  'A page of a table as it was at a moment, in primary key order: SELECT * FROM bemi.table_page_at(NULL::todo, moment, ''{"id": 100}'', 50).';

-- A row (as JSON) as it was right after the change with id through committed at at: of the
-- transactions committed at that time (it happens) only those committed up to it count. The
-- moment of bemi.transaction_moment or bemi.position_moment.
CREATE FUNCTION bemi.row_at_commit(relation regclass, primary_key text, at timestamptz, through bigint) RETURNS jsonb
LANGUAGE sql STABLE
RETURN (SELECT bemi.row_from(relation, k.key, at, bemi.row_history(bemi.history_of(relation, at) || bemi.key_form(relation), k.key, at, through))
        FROM (SELECT bemi.trail_key(relation, primary_key) AS key) AS k);

-- The whole table as typed rows at the same moment.
CREATE FUNCTION bemi.table_at_commit(relation anyelement, at timestamptz, through bigint) RETURNS SETOF anyelement
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM bemi.check_trail(bemi.history_of(bemi.table_of(pg_catalog.pg_typeof(relation)), at), at);
  RETURN QUERY SELECT * FROM bemi.table_from(relation, at, 'bemi.changes', through);
END
$$;

-- The moment right after a transaction committed, as the pair the time-travel functions take:
-- its commit time, and its last change, so that of the transactions committed at the same
-- time (it happens) only those committed up to it count. Errors as bemi.transaction_changes.
CREATE FUNCTION bemi.transaction_moment(transaction_id bigint, database_name text DEFAULT NULL,
                                        OUT at timestamptz, OUT through bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  SELECT pg_catalog.max(x.committed_at), pg_catalog.max(x.id) INTO at, through
  FROM bemi.changes AS x WHERE x.id = ANY (bemi.transaction_changes(transaction_moment.transaction_id, database_name));
END
$$;

CREATE FUNCTION bemi.row_at_transaction(relation regclass, primary_key text, transaction_id bigint) RETURNS jsonb
LANGUAGE sql STABLE
RETURN (SELECT bemi.row_at_commit(relation, primary_key, m.at, m.through) FROM bemi.transaction_moment(transaction_id) AS m);

COMMENT ON FUNCTION bemi.row_at_transaction(regclass, text, bigint) IS
  'A row (as JSON) as it was right after a transaction (bemi.changes.transaction_id) committed: exact where commit times are equal.';

CREATE FUNCTION bemi.table_at_transaction(relation anyelement, transaction_id bigint) RETURNS SETOF anyelement
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  moment record := bemi.transaction_moment(transaction_id);
BEGIN
  RETURN QUERY SELECT * FROM bemi.table_at_commit(relation, moment.at, moment.through);
END
$$;

COMMENT ON FUNCTION bemi.table_at_transaction(anyelement, bigint) IS
  'A whole table as typed rows, as it was right after a transaction committed: SELECT * FROM bemi.table_at_transaction(NULL::todo, 1234).';

-- The cause of a gap in capture that holds a WAL position (bemi.gaps: from_lsn up to to_lsn,
-- or on while it is open), of any slot whose trail is here; NULL: none.
-- SECURITY DEFINER: it reads bemi.gaps for callers that may not, and tells them only a cause.
CREATE FUNCTION bemi.position_gap(lsn pg_lsn) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
  SELECT g.cause FROM bemi.gaps AS g
  WHERE g.from_lsn <= position_gap.lsn AND (g.to_lsn IS NULL OR position_gap.lsn < g.to_lsn)
  ORDER BY g.id DESC LIMIT 1;
END;

-- The moment right after the transaction of the change at a WAL position (bemi.changes.position)
-- committed, as bemi.transaction_moment gives it, and that transaction. The trail keeps each
-- change's own position, not its transaction's commit position (a transaction that wrote
-- before another committed can commit after it), so a position no stored change has cannot be
-- placed among the commits exactly: refused, as one in a gap in capture (ZB001), past the
-- newest change stored (22023: not ingested yet, or no change) or none of a change (22023).
-- database_name: of a trail database holding the trails of several, whose (NULL: any, when
-- only one has a change there).
CREATE FUNCTION bemi.position_moment(lsn pg_lsn, database_name text DEFAULT NULL,
                                     OUT at timestamptz, OUT through bigint, OUT transaction_id bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  change record;
  transactions bigint;
  gap text;
  newest pg_lsn;
BEGIN
  IF position_moment.lsn IS NULL THEN
    RAISE EXCEPTION 'bemi: the position must not be NULL' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  SELECT pg_catalog.count(*) OVER () AS transactions, x.database, x.transaction_id, x.committed_at INTO change
  FROM bemi.changes AS x WHERE x.position = position_moment.lsn AND (database_name IS NULL OR x.database = database_name)
  GROUP BY x.database, x.transaction_id, x.committed_at;
  transactions := coalesce(change.transactions, 0);
  IF transactions > 1 THEN
    RAISE EXCEPTION 'bemi: position % names changes of % transactions in the trail (of several databases)', position_moment.lsn, transactions
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Name the database: bemi.position_moment(lsn, database_name).';
  ELSIF transactions = 0 THEN
    gap := bemi.position_gap(position_moment.lsn);
    IF gap IS NOT NULL THEN
      RAISE EXCEPTION 'bemi: the trail may lack the change at position %: it lies in a gap in capture (%)', position_moment.lsn, gap
        USING ERRCODE = 'ZB001', HINT = 'SELECT * FROM bemi.coverage shows the gaps; ask for a position after the last one.';
    END IF;
    SELECT x.position INTO newest FROM bemi.changes AS x WHERE database_name IS NULL OR x.database = database_name
    ORDER BY x.position DESC LIMIT 1;
    IF newest IS NULL OR position_moment.lsn > newest THEN
      RAISE EXCEPTION 'bemi: the trail holds no change at position % (its newest change is at %)', position_moment.lsn,
          coalesce(newest::text, 'none yet')
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'A change not ingested yet: wait for bemi-pg worker or run SELECT bemi.ingest(), then ask again.';
    END IF;
    RAISE EXCEPTION 'bemi: the trail holds no change at position %', position_moment.lsn
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'A position names a change (bemi.changes.position); the trail does not keep commit positions. It may also be of a table not tracked, or dropped by bemi.retain.';
  END IF;
  SELECT pg_catalog.max(x.committed_at), pg_catalog.max(x.id), change.transaction_id INTO at, through, transaction_id
  FROM bemi.changes AS x WHERE x.transaction_id = change.transaction_id AND x.committed_at = change.committed_at
    AND x.database = change.database;
END
$$;

COMMENT ON FUNCTION bemi.position_moment(pg_lsn, text) IS
  'The moment right after the transaction of the change at a WAL position (bemi.changes.position) committed: (commit time, its last change id, the transaction).';

CREATE FUNCTION bemi.row_at_position(relation regclass, primary_key text, lsn pg_lsn) RETURNS jsonb
LANGUAGE sql STABLE
RETURN (SELECT bemi.row_at_commit(relation, primary_key, m.at, m.through) FROM bemi.position_moment(lsn) AS m);

COMMENT ON FUNCTION bemi.row_at_position(regclass, text, pg_lsn) IS
  'A row (as JSON) as it was right after the transaction of the change at a WAL position committed: exact where commit times are equal.';

CREATE FUNCTION bemi.table_at_position(relation anyelement, lsn pg_lsn) RETURNS SETOF anyelement
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  moment record := bemi.position_moment(lsn);
BEGIN
  RETURN QUERY SELECT * FROM bemi.table_at_commit(relation, moment.at, moment.through);
END
$$;

COMMENT ON FUNCTION bemi.table_at_position(anyelement, pg_lsn) IS
  'A whole table as typed rows, as it was right after the transaction of the change at a WAL position committed: SELECT * FROM bemi.table_at_position(NULL::todo, ''0/1A2B3C'').';

-- Every version of the row with a primary key, oldest first, following its key moves both
-- ways: each with the commit time it began (NULL: before its first change the trail holds,
-- when tracking began), the commit time it ended (by a later version, a DELETE, a TRUNCATE;
-- NULL: it still is, as far as the trail is ingested), the change that made it and the row
-- (as bemi.changes.after). Walks one index entry per version. An earlier row that had the key
-- and was deleted before this one was created is another row: not listed.
CREATE FUNCTION bemi.row_versions(relation regclass, row_key text)
RETURNS TABLE (valid_from timestamptz, valid_to timestamptz, change_id bigint, transaction_id bigint, primary_key text, image jsonb)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
  history jsonb := bemi.history_of(relation, 'infinity');
  key text := bemi.trail_key(relation, row_key);
  e record;
  moved record;
  at timestamptz := 'infinity';
  through bigint;
  started boolean := false;
  events bigint[] := '{}';
BEGIN
  -- Back from the latest change of the key, through the keys the row had before.
  LOOP
    SELECT * INTO e FROM bemi.row_event(history ->> 'database', history ->> 'schema', history ->> 'table', key, at, true, through) AS r;
    EXIT WHEN NOT FOUND;
    IF e.operation IN ('DELETE', 'TRUNCATE') OR e.primary_key IS DISTINCT FROM key THEN
      EXIT WHEN started; -- an earlier row under this key ended here
      IF e.operation NOT IN ('DELETE', 'TRUNCATE') AND moved IS NULL THEN
        moved := e; -- the row moved to another key: followed forward below
      END IF;
    ELSE
      started := true;
      key := coalesce(e.previous_key, key);
    END IF;
    events := events || e.id;
    EXIT WHEN e.operation = 'CREATE';
    at := e.committed_at;
    through := e.id - 1;
  END LOOP;
  -- Forward from a move away, through the keys the row had after.
  IF moved IS NOT NULL THEN
    key := moved.primary_key;
    at := moved.committed_at;
    through := moved.id;
    LOOP
      SELECT * INTO e FROM bemi.row_event(history ->> 'database', history ->> 'schema', history ->> 'table', key, at, false, through) AS r;
      EXIT WHEN NOT FOUND;
      events := events || e.id;
      EXIT WHEN e.operation IN ('DELETE', 'TRUNCATE');
      key := e.primary_key;
      at := e.committed_at;
      through := e.id;
    END LOOP;
  END IF;
  RETURN QUERY
    WITH chain AS (
      SELECT c.id, c.committed_at, c.transaction_id, c.operation, c.primary_key, c.before, c.after,
        pg_catalog.lead(c.committed_at) OVER (ORDER BY c.committed_at, c.id) AS next_at,
        pg_catalog.row_number() OVER (ORDER BY c.committed_at, c.id) AS n
      FROM bemi.changes AS c WHERE c.id = ANY (events)
    )
    SELECT NULL::timestamptz, c.committed_at, NULL::bigint, NULL::bigint, bemi.image_key(c.before, bemi.key_columns(relation)), c.before
    FROM chain AS c WHERE c.n = 1 AND c.operation IN ('UPDATE', 'DELETE')
    UNION ALL
    SELECT c.committed_at, c.next_at, c.id, c.transaction_id, c.primary_key, c.after
    FROM chain AS c WHERE c.operation IN ('CREATE', 'UPDATE')
    ORDER BY 1 NULLS FIRST, 3;
END
$$;

COMMENT ON FUNCTION bemi.row_versions(regclass, text) IS
  'Every version of a row, oldest first, following its key moves: valid_from, valid_to, the change and transaction that made it, its key and the row.';

CREATE FUNCTION bemi.diff(before jsonb, after jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE
RETURN (SELECT coalesce(pg_catalog.jsonb_object_agg(k.name,
          pg_catalog.jsonb_build_array(before OPERATOR(pg_catalog.->) k.name, after OPERATOR(pg_catalog.->) k.name)), '{}')
        FROM (SELECT pg_catalog.jsonb_object_keys(coalesce(before, '{}')) UNION SELECT pg_catalog.jsonb_object_keys(coalesce(after, '{}'))) AS k(name)
        WHERE (before OPERATOR(pg_catalog.->) k.name) IS DISTINCT FROM (after OPERATOR(pg_catalog.->) k.name));

COMMENT ON FUNCTION bemi.diff(jsonb, jsonb) IS
  'The columns that differ between two row images: {"column": [old, new]}; a missing key shows as null.';

REVOKE ALL ON FUNCTION bemi.history_of(regclass, timestamptz), bemi.check_trail(jsonb, timestamptz),
  bemi.pending_writes(regclass, integer), bemi.covered_from(name, oid, text, text), bemi.check_stored(regclass, bigint[]),
  bemi.check_pending(regclass) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bemi.history_of(regclass, timestamptz), bemi.check_trail(jsonb, timestamptz),
  bemi.pending_writes(regclass, integer), bemi.covered_from(name, oid, text, text), bemi.check_stored(regclass, bigint[]),
  bemi.check_pending(regclass) TO PUBLIC;
REVOKE ALL ON FUNCTION bemi.position_gap(pg_lsn) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bemi.position_gap(pg_lsn) TO PUBLIC;
