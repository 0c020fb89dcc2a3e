\echo Use "CREATE EXTENSION bemi" to load this file. \quit

-- bemi: automatic, context-aware change tracking.
-- Sections follow a change on its way: context, trigger, tracking, slot, decoding, ingest.

DO $$
BEGIN
  IF pg_catalog.current_setting('wal_level') <> 'logical' THEN
    RAISE WARNING 'bemi: wal_level is "%", changes cannot be decoded until it is "logical"',
      pg_catalog.current_setting('wal_level')
      USING HINT = 'ALTER SYSTEM SET wal_level = logical; then restart the server.';
  END IF;
END
$$;

------------------------------------------------------------------------------------------
-- 1. Context: the application says who, where and how, once per transaction.
--    It lives in a transaction-local setting, like SET LOCAL; nothing is written yet.
------------------------------------------------------------------------------------------

CREATE FUNCTION bemi.set_context(context jsonb) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  body text := context::text;
  setting text := pg_catalog.current_setting('bemi.max_context_bytes', true);
  limit_bytes integer := CASE WHEN setting <> '' THEN setting::integer ELSE 65536 END;
BEGIN
  IF pg_catalog.jsonb_typeof(context) <> 'object' THEN
    RAISE EXCEPTION 'bemi: context must be a JSON object, not %', pg_catalog.jsonb_typeof(context)
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass an object such as {"user_id": 7}, or NULL to clear.';
  END IF;
  IF pg_catalog.octet_length(body) > limit_bytes THEN
    RAISE EXCEPTION 'bemi: context is % bytes, over the limit of % bytes', pg_catalog.octet_length(body), limit_bytes
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Keep contexts small, or raise the setting bemi.max_context_bytes.';
  END IF;
  -- NULL and an empty object are no context at all.
  PERFORM pg_catalog.set_config('bemi.context', CASE WHEN body IS NULL OR body = '{}' THEN '' ELSE body END, true);
END
$$;

COMMENT ON FUNCTION bemi.set_context(jsonb) IS
  'Sets the application context of the current transaction (a JSON object; NULL clears).';

CREATE FUNCTION bemi.context() RETURNS jsonb
LANGUAGE sql STABLE
RETURN nullif(pg_catalog.current_setting('bemi.context', true), '')::jsonb;

COMMENT ON FUNCTION bemi.context() IS 'The application context in effect now, or NULL.';

------------------------------------------------------------------------------------------
-- 2. The context trigger: before each statement on a tracked table, put the context into
--    the WAL, once, and only when it differs from the last one this transaction emitted.
------------------------------------------------------------------------------------------

-- The context of a statement that ends with a /*Bemi {...} Bemi*/ comment, the form Bemi's
-- ORM packages append; '' when it has none. Only a comment that ends the statement counts (a
-- string literal cannot end with */, so data cannot pose as context), and only the last
-- limit + 64 characters are read. A bad comment is a WARNING, never an error.
CREATE FUNCTION bemi.comment_context(query text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  limit_bytes integer := coalesce(
    nullif(pg_catalog.current_setting('bemi.max_context_bytes', true), ''), '65536')::integer;
  tail text := pg_catalog.rtrim(query, E' \t\r\n;');
  opening integer;
  body text;
  parsed jsonb;
BEGIN
  IF pg_catalog.right(tail, 6) <> 'Bemi*/' THEN
    RETURN '';
  END IF;
  tail := pg_catalog.right(tail, limit_bytes + 64);
  -- The last /*Bemi of the tail: found from its end, as "imeB*/" in the reversed tail.
  opening := pg_catalog.strpos(pg_catalog.reverse(tail), 'imeB*/');
  body := CASE WHEN opening >= 7 THEN pg_catalog.btrim(
    pg_catalog.substr(tail, pg_catalog.length(tail) - opening + 2, opening - 7), E' \t\r\n') ELSE '' END;
  IF opening = 0 OR pg_catalog.octet_length(body) > limit_bytes THEN
    RAISE WARNING 'bemi: ignoring a /*Bemi ... Bemi*/ comment over the limit of % bytes', limit_bytes
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Keep contexts small, or raise the setting bemi.max_context_bytes.';
    RETURN '';
  END IF;
  BEGIN
    parsed := body::jsonb;
  EXCEPTION WHEN invalid_text_representation THEN
    RAISE WARNING 'bemi: ignoring a /*Bemi ... Bemi*/ comment that is not JSON: %', pg_catalog.left(body, 200)
      USING ERRCODE = 'invalid_text_representation';
    RETURN '';
  END;
  IF pg_catalog.jsonb_typeof(parsed) <> 'object' THEN
    RAISE WARNING 'bemi: ignoring a /*Bemi ... Bemi*/ comment that is a JSON %, not an object', pg_catalog.jsonb_typeof(parsed)
      USING ERRCODE = 'invalid_parameter_value';
    RETURN '';
  END IF;
  RETURN coalesce(nullif(parsed, '{}')::text, '');
END
$$;

COMMENT ON FUNCTION bemi.comment_context(text) IS
  'The context of a statement''s trailing /*Bemi {...} Bemi*/ comment, or '''' (WARNING when malformed).';

-- Without a set_context in the transaction, the statement's own /*Bemi ... Bemi*/ comment
-- is the context: one current_query() read and one strpos per statement, never per row.
CREATE FUNCTION bemi.context_trigger() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
  pending text := coalesce(pg_catalog.current_setting('bemi.context', true), '');
  query text;
BEGIN
  IF pending OPERATOR(pg_catalog.=) '' THEN
    query := pg_catalog.current_query();
    IF pg_catalog.strpos(query, '/*Bemi') OPERATOR(pg_catalog.>) 0 THEN
      pending := bemi.comment_context(query);
    END IF;
  END IF;
  -- Operators are qualified: this runs with the writer's search_path (docs/security.md).
  IF pending OPERATOR(pg_catalog.<>) coalesce(pg_catalog.current_setting('bemi.emitted', true), '') THEN
    PERFORM pg_catalog.pg_logical_emit_message(true, 'bemi',
      CASE WHEN pending OPERATOR(pg_catalog.=) '' THEN '{}' ELSE pending END);
    PERFORM pg_catalog.set_config('bemi.emitted', pending, true);
  END IF;
  RETURN NULL;
END
$$;

------------------------------------------------------------------------------------------
-- 3. Tracking: which tables are tracked. A table is tracked when it carries the context
--    trigger; its rows are logged whole (REPLICA IDENTITY FULL) so "before" is complete.
------------------------------------------------------------------------------------------

CREATE VIEW bemi.tracked AS
SELECT c.oid::pg_catalog.regclass AS relation, n.nspname::text AS schema, c.relname::text AS "table"
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE t.tgname = 'bemi_context' AND t.tgfoid = 'bemi.context_trigger()'::pg_catalog.regprocedure
  AND NOT c.relispartition;

COMMENT ON VIEW bemi.tracked IS 'The tracked tables (partitions are covered by their tracked parent).';

-- A table and, when it is partitioned, all its partitions.
CREATE FUNCTION bemi.partition_family(relation regclass) RETURNS SETOF regclass
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT relation
  UNION
  SELECT p.relid FROM pg_catalog.pg_partition_tree(relation) AS p;
END;

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

-- The names under which test_decoding prints the changes of tracked tables, partitions
-- included, each with the tracked table it reports under and its primary key.
CREATE VIEW bemi.tracked_names AS
SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) AS printed,
  t.schema, t."table", bemi.primary_key(t.relation) AS pk
FROM bemi.tracked AS t
CROSS JOIN LATERAL bemi.partition_family(t.relation) AS f(member)
JOIN pg_catalog.pg_class c ON c.oid = f.member
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace;

-- Every name tracked tables were seen under. The WAL names a table as it was when it was
-- changed, so changes still pending when a table is renamed, dropped or untracked are
-- found here, under the name they were made with; a name that stopped being tracked
-- stops matching changes made after untracked_at.
CREATE TABLE bemi.names (
  printed text PRIMARY KEY,
  schema text NOT NULL,
  "table" text NOT NULL,
  pk jsonb,
  untracked_at pg_lsn
);

-- Brings bemi.names up to date with the catalog; track, untrack and ingest call it.
CREATE FUNCTION bemi.remember_names() RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
  -- Only new or changed names are written (an upsert would lock every row on every ingest).
  INSERT INTO bemi.names (printed, schema, "table", pk)
  SELECT t.printed, t.schema, t."table", t.pk FROM bemi.tracked_names AS t
  WHERE NOT EXISTS (SELECT FROM bemi.names AS h WHERE h.printed = t.printed
    AND (h.schema, h."table", h.pk, h.untracked_at) IS NOT DISTINCT FROM (t.schema, t."table", t.pk, NULL))
  ON CONFLICT (printed) DO UPDATE SET schema = excluded.schema, "table" = excluded."table", pk = excluded.pk,
    untracked_at = NULL;
  UPDATE bemi.names SET untracked_at = pg_catalog.pg_current_wal_insert_lsn()
  WHERE untracked_at IS NULL AND printed NOT IN (SELECT t.printed FROM bemi.tracked_names AS t);
END;

CREATE FUNCTION bemi.track(relation regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  member regclass;
BEGIN
  IF (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = relation) NOT IN ('r', 'p') THEN
    RAISE EXCEPTION 'bemi: % is not a table', relation
      USING ERRCODE = 'wrong_object_type', HINT = 'Only ordinary and partitioned tables can be tracked.';
  END IF;
  IF (SELECT c.relispartition FROM pg_catalog.pg_class c WHERE c.oid = relation) THEN
    RAISE EXCEPTION 'bemi: % is a partition', relation
      USING ERRCODE = 'wrong_object_type', HINT = 'Track its partitioned parent, which covers every partition.';
  END IF;
  -- Statement triggers of a partitioned table do not fire for statements on a partition,
  -- so every member of the family gets one.
  FOR member IN SELECT bemi.partition_family(relation) LOOP
    EXECUTE pg_catalog.format('ALTER TABLE %s REPLICA IDENTITY FULL', member);
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.tgrelid = member AND t.tgname = 'bemi_context') THEN
      EXECUTE pg_catalog.format(
        'CREATE TRIGGER bemi_context BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION bemi.context_trigger()', member);
    END IF;
  END LOOP;
  PERFORM bemi.remember_names();
END
$$;

COMMENT ON FUNCTION bemi.track(regclass) IS
  'Tracks a table (idempotent): REPLICA IDENTITY FULL plus the context trigger, on every partition too.';

CREATE FUNCTION bemi.untrack(relation regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  member regclass;
BEGIN
  FOR member IN SELECT bemi.partition_family(relation) LOOP
    EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS bemi_context ON %s', member);
  END LOOP;
  PERFORM bemi.remember_names();
END
$$;

COMMENT ON FUNCTION bemi.untrack(regclass) IS 'Stops tracking a table; its history stays in bemi.changes.';

CREATE FUNCTION bemi.track_all(schema_name name DEFAULT 'public') RETURNS SETOF regclass
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  relation regclass;
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_namespace n WHERE n.nspname = schema_name) THEN
    RAISE EXCEPTION 'bemi: schema "%" does not exist', schema_name USING ERRCODE = 'invalid_schema_name';
  END IF;
  FOR relation IN
    SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = schema_name AND c.relkind IN ('r', 'p') AND NOT c.relispartition
    ORDER BY c.relname
  LOOP
    PERFORM bemi.track(relation);
    RETURN NEXT relation;
  END LOOP;
END
$$;

COMMENT ON FUNCTION bemi.track_all(name) IS 'Tracks every ordinary and partitioned table of a schema.';

------------------------------------------------------------------------------------------
-- 4. The slot: a logical replication slot named "bemi" keeps the WAL until it is ingested.
--    It uses test_decoding, which every stock server allows.
------------------------------------------------------------------------------------------

CREATE TABLE bemi.progress (
  slot_name name PRIMARY KEY,
  lsn pg_lsn NOT NULL,
  ingested_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  stored bigint NOT NULL DEFAULT 0
);

COMMENT ON TABLE bemi.progress IS
  'The end of the last transaction ingested from each slot (the slot may be advanced up to here), and how many rows that ingest stored.';

CREATE FUNCTION bemi.create_slot() RETURNS pg_lsn
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  start pg_lsn;
BEGIN
  SELECT s.lsn INTO start FROM pg_catalog.pg_create_logical_replication_slot('bemi', 'test_decoding') AS s;
  INSERT INTO bemi.progress (slot_name, lsn) VALUES ('bemi', start)
  ON CONFLICT (slot_name) DO UPDATE SET lsn = excluded.lsn, ingested_at = excluded.ingested_at;
  RETURN start;
END
$$;

COMMENT ON FUNCTION bemi.create_slot() IS 'Creates the logical slot "bemi"; changes are captured from here on.';

CREATE FUNCTION bemi.drop_slot() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM pg_catalog.pg_drop_replication_slot('bemi');
  DELETE FROM bemi.progress WHERE slot_name = 'bemi';
END
$$;

COMMENT ON FUNCTION bemi.drop_slot() IS 'Drops the logical slot "bemi"; WAL not yet ingested is no longer kept.';

------------------------------------------------------------------------------------------
-- 5. Decoding: test_decoding's text, read back into wal2json format-version 2 entries.
--    Names and values are parsed by their quoting rules, never by splitting on spaces.
------------------------------------------------------------------------------------------

-- An identifier as the server prints it (quote_identifier), back to the name.
CREATE FUNCTION bemi.unquote_ident(ident text) RETURNS text
LANGUAGE sql IMMUTABLE
RETURN CASE WHEN pg_catalog.left(ident, 1) = '"'
  THEN pg_catalog.replace(pg_catalog.substr(ident, 2, pg_catalog.length(ident) - 2), '""', '"')
  ELSE ident END;

-- The JSON of a value of a type that needs the type's own input function (arrays,
-- composites, domains, types with a cast to json). Types gone since are kept as text.
CREATE FUNCTION bemi.cast_json(type_name text, value text) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  type_oid regtype := pg_catalog.to_regtype(type_name);
  result jsonb;
BEGIN
  IF type_oid IS NULL OR (SELECT t.typtype FROM pg_catalog.pg_type t WHERE t.oid = type_oid) = 'e' THEN
    RETURN pg_catalog.to_jsonb(value);
  END IF;
  EXECUTE pg_catalog.format('SELECT pg_catalog.to_jsonb($1::%s)', type_oid) INTO result USING value;
  RETURN result;
EXCEPTION WHEN data_exception THEN
  RETURN pg_catalog.to_jsonb(value);
END
$$;

-- The JSON text of a printed value, exactly as to_jsonb() gives it for the typed value:
-- numbers, booleans, json and arrays stay what they are, so jsonb_populate_record()
-- round-trips. literal is the value as printed, value its text (NULL for null). A plain SQL
-- expression, so PL/pgSQL inlines it into bemi.parse_tuple().
CREATE FUNCTION bemi.json_value(type_name text, literal text, value text) RETURNS text
LANGUAGE sql STABLE
RETURN CASE
  WHEN value IS NULL THEN 'null'
  WHEN pg_catalog.left(literal, 1) <> '''' THEN -- printed bare: numbers, booleans, B'bits'
    CASE WHEN type_name = 'oid' OR value IN ('NaN', 'Infinity', '-Infinity') OR pg_catalog.left(literal, 2) = 'B'''
      THEN pg_catalog.to_json(value)::text ELSE value END
  WHEN type_name IN ('jsonb', 'json') THEN value
  WHEN type_name = 'timestamp with time zone' THEN pg_catalog.to_json(value::timestamptz)::text
  WHEN type_name = 'timestamp without time zone' THEN pg_catalog.to_json(value::timestamp)::text
  WHEN type_name IN ('text', 'character varying', 'character', 'uuid', 'date', 'bytea', 'name', '"char"',
                     'time without time zone', 'time with time zone', 'interval', 'inet', 'cidr',
                     'macaddr', 'money', 'xml', 'tsvector')
    THEN pg_catalog.to_json(value)::text
  WHEN type_name = 'text[]' THEN pg_catalog.to_json(value::text[])::text
  WHEN type_name = 'integer[]' THEN pg_catalog.to_json(value::integer[])::text
  WHEN type_name = 'bigint[]' THEN pg_catalog.to_json(value::bigint[])::text
  ELSE bemi.cast_json(type_name, value)::text END;

-- Fills the unchanged TOASTed columns of a new image from the old one (REPLICA IDENTITY
-- FULL logs it whole); without an old image they cannot be known and are left out.
CREATE FUNCTION bemi.fill_unchanged(columns jsonb, identity jsonb) RETURNS jsonb
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT pg_catalog.jsonb_agg(coalesce(
      (SELECT o.col FROM pg_catalog.jsonb_array_elements(identity) AS o(col)
       WHERE c.col ? 'unchanged' AND o.col ->> 'name' = c.col ->> 'name'),
      c.col) ORDER BY c.ord)
  FROM pg_catalog.jsonb_array_elements(columns) WITH ORDINALITY AS c(col, ord)
  WHERE NOT c.col ? 'unchanged' OR identity IS NOT NULL;
END;

-- One printed tuple (name[type]:value ..., with old-key:/new-tuple: markers) read by the
-- server's quoting rules: names "a""b", values 'it''s', so a space, quote or marker inside a
-- value never splits it. Returns the images as JSON text, parsed once by the caller: as
-- wal2json arrays (identity, columns) or as objects of the row (old_row, new_row, and
-- new_nulls, the new image's columns as nulls: test_decoding leaves NULLs out of old images).
-- Unchanged TOASTed values are marked {"unchanged": true} in arrays, left out of objects.
CREATE FUNCTION bemi.parse_tuple(tuple text, old_image boolean, as_wal2json boolean,
  OUT identity text, OUT columns text, OUT old_row text, OUT new_row text, OUT new_nulls text,
  OUT unchanged boolean)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  rest text := tuple;
  is_new boolean := NOT old_image;
  name text;
  type text;
  literal text;
  value text;
  at integer;
  item text;
BEGIN
  unchanged := false;
  WHILE rest <> '' LOOP
    IF pg_catalog.starts_with(rest, 'old-key: ') THEN
      is_new := false; rest := pg_catalog.substr(rest, 10); CONTINUE;
    ELSIF pg_catalog.starts_with(rest, 'new-tuple: ') THEN
      is_new := true; rest := pg_catalog.substr(rest, 12); CONTINUE;
    END IF;
    -- name[type]: a ] inside the type (integer[]) is never followed by a colon.
    name := CASE WHEN pg_catalog.left(rest, 1) = '"' THEN (pg_catalog.regexp_match(rest, '^"(?:[^"]|"")*"'))[1]
                 ELSE pg_catalog.split_part(rest, '[', 1) END;
    rest := pg_catalog.substr(rest, pg_catalog.length(name) + 2);
    at := pg_catalog.strpos(rest, ']:');
    type := pg_catalog.left(rest, at - 1);
    rest := pg_catalog.substr(rest, at + 2);
    -- The value: quoted up to a quote that is not doubled, or bare up to the next space.
    IF pg_catalog.left(rest, 1) = '''' THEN
      at := 1;
      LOOP
        at := at + pg_catalog.strpos(pg_catalog.substr(rest, at + 1), '''');
        EXIT WHEN pg_catalog.substr(rest, at + 1, 1) <> '''';
        at := at + 1;
      END LOOP;
      literal := pg_catalog.left(rest, at);
      value := pg_catalog.replace(pg_catalog.substr(literal, 2, at - 2), '''''', '''');
    ELSE
      at := pg_catalog.strpos(rest, ' ');
      literal := CASE WHEN at = 0 THEN rest ELSE pg_catalog.left(rest, at - 1) END;
      at := pg_catalog.length(literal);
      value := CASE WHEN literal = 'null' THEN NULL
                    WHEN pg_catalog.left(literal, 2) = 'B''' THEN pg_catalog.substr(literal, 3, at - 3)
                    ELSE literal END;
    END IF;
    rest := pg_catalog.substr(rest, at + 2);
    name := CASE WHEN pg_catalog.left(name, 1) = '"' THEN pg_catalog.to_json(bemi.unquote_ident(name))::text
                 ELSE '"' || name || '"' END;
    IF literal = 'unchanged-toast-datum' THEN
      unchanged := true;
      item := '{"name":' || name || ',"type":' || pg_catalog.to_json(type)::text || ',"unchanged":true}';
    ELSIF as_wal2json THEN
      item := '{"name":' || name || ',"type":' || pg_catalog.to_json(type)::text
        || ',"value":' || bemi.json_value(type, literal, value) || '}';
    ELSE
      item := name || ':' || bemi.json_value(type, literal, value);
    END IF;
    IF as_wal2json AND is_new THEN
      columns := pg_catalog.concat_ws(',', columns, item);
    ELSIF as_wal2json THEN
      identity := pg_catalog.concat_ws(',', identity, item);
    ELSIF is_new THEN
      new_nulls := pg_catalog.concat_ws(',', new_nulls, name || ':null');
      IF literal <> 'unchanged-toast-datum' THEN
        new_row := pg_catalog.concat_ws(',', new_row, item);
      END IF;
    ELSE
      old_row := pg_catalog.concat_ws(',', old_row, item);
    END IF;
  END LOOP;
  identity := '[' || identity || ']';
  columns := '[' || columns || ']';
  old_row := '{' || old_row || '}';
  new_row := CASE WHEN NOT as_wal2json THEN '{' || coalesce(new_row, '') || '}' END;
  new_nulls := '{' || new_nulls || '}';
END
$$;

-- Decodes the pending WAL of the slot without consuming it: one wal2json format-version 2
-- entry per row. B and C for every transaction (so progress can pass transactions that
-- touched no tracked table), M for bemi's context messages, I/U/D/T for tracked tables;
-- a partition's changes are reported under its tracked parent, and changes of renamed,
-- dropped or untracked tables under the name they were made with (bemi.names). With
-- as_wal2json, entries carry wal2json's columns/identity arrays (bemi.wal); without, the
-- old and new rows as JSON objects instead (bemi.ingest). One set-based query, one
-- bemi.parse_tuple() call per row change.
CREATE FUNCTION bemi.decode(max_changes integer, as_wal2json boolean)
RETURNS TABLE (lsn pg_lsn, xid xid, data jsonb, old_row jsonb, new_row jsonb, new_nulls jsonb)
LANGUAGE sql VOLATILE
SET datestyle = 'ISO, MDY' SET intervalstyle = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' SET timezone = 'UTC' SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
  -- The slot serves one reader at a time: wait for a running ingest rather than fail.
  SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('bemi.ingest'));
  WITH live AS MATERIALIZED (
    SELECT t.printed, t.schema, t."table", t.pk FROM bemi.tracked_names AS t
  ), relations AS MATERIALIZED (
    SELECT t.printed, 'table ' || t.printed || ': ' AS prefix, t.schema, t."table", t.pk, NULL::pg_lsn AS until
    FROM live AS t
    UNION ALL
    SELECT h.printed, 'table ' || h.printed || ': ', h.schema, h."table", h.pk, h.untracked_at
    FROM bemi.names AS h WHERE h.printed NOT IN (SELECT t.printed FROM live AS t)
  ), lines AS MATERIALIZED (
    SELECT w.lsn, w.xid, w.data AS line, w.n
    FROM pg_catalog.pg_logical_slot_peek_changes('bemi', NULL, max_changes,
      'include-xids', '1', 'include-timestamp', '1', 'skip-empty-xacts', '1') WITH ORDINALITY AS w(lsn, xid, data, n)
  ), entries AS (
    -- Transaction boundaries and context messages.
    SELECT l.n, 0::bigint AS sub, l.lsn, l.xid,
      CASE pg_catalog.left(l.line, 6)
        WHEN 'BEGIN ' THEN pg_catalog.jsonb_build_object('action', 'B', 'xid', l.xid::text::bigint)
        WHEN 'COMMIT' THEN pg_catalog.jsonb_build_object('action', 'C', 'xid', l.xid::text::bigint,
          'timestamp', pg_catalog.substring(l.line, ' \(at (.*)\)$'))
        ELSE pg_catalog.jsonb_build_object('action', 'M', 'transactional', true, 'prefix', 'bemi',
          'content', pg_catalog.substr(l.line, pg_catalog.strpos(l.line, ' content:') + 9))
      END AS head, NULL::text AS tuple, NULL::boolean AS old_image
    FROM lines l
    WHERE pg_catalog.left(l.line, 6) IN ('BEGIN ', 'COMMIT')
       OR pg_catalog.starts_with(l.line, 'message: transactional: 1 prefix: bemi, sz: ')
    UNION ALL
    -- Row changes: the line starts with the printed name of a tracked table (or partition).
    SELECT l.n, 0, l.lsn, l.xid,
      pg_catalog.jsonb_build_object('action', pg_catalog.left(c.op, 1), 'schema', r.schema, 'table', r."table")
        || CASE WHEN r.pk IS NULL THEN '{}' ELSE pg_catalog.jsonb_build_object('pk', r.pk) END,
      pg_catalog.substr(c.rest, pg_catalog.length(c.op) + 3), c.op = 'DELETE'
    FROM lines l
    JOIN relations r ON pg_catalog.starts_with(l.line, r.prefix) AND (r.until IS NULL OR l.lsn < r.until)
    CROSS JOIN LATERAL (SELECT pg_catalog.substr(l.line, pg_catalog.length(r.prefix) + 1) AS rest) AS p
    CROSS JOIN LATERAL (SELECT pg_catalog.split_part(p.rest, ':', 1) AS op, p.rest) AS c
    WHERE c.op IN ('INSERT', 'UPDATE', 'DELETE')
    UNION ALL
    -- TRUNCATE: one line names every table truncated together; one entry per tracked table.
    SELECT l.n, pg_catalog.min(nm.ord), l.lsn, l.xid,
      pg_catalog.jsonb_build_object('action', 'T', 'schema', r.schema, 'table', r."table"), NULL, NULL
    FROM lines l
    CROSS JOIN LATERAL pg_catalog.regexp_matches(
      pg_catalog.substring(l.line, '^table (.*): TRUNCATE: [a-z_() -]+$'),
      '(?:"[^"]*(?:""[^"]*)*"|[a-z0-9_]+)\.(?:"[^"]*(?:""[^"]*)*"|[a-z0-9_]+)', 'g') WITH ORDINALITY AS nm(name, ord)
    JOIN relations r ON r.printed = nm.name[1] AND (r.until IS NULL OR l.lsn < r.until)
    WHERE pg_catalog.octet_length(l.line) < 65536 AND pg_catalog.starts_with(l.line, 'table ')
      AND pg_catalog.strpos(l.line, ': TRUNCATE: ') > 0 AND l.line ~ ': TRUNCATE: [a-z_() -]+$'
    GROUP BY l.n, l.lsn, l.xid, r.schema, r."table"
  )
  SELECT e.lsn, e.xid,
    CASE WHEN i.columns IS NULL AND i.identity IS NULL THEN e.head
      ELSE e.head
        || CASE WHEN i.columns IS NULL THEN '{}'
             WHEN i.unchanged AND i.identity IS NOT NULL
             THEN pg_catalog.jsonb_build_object('columns', bemi.fill_unchanged(i.columns::jsonb, i.identity::jsonb))
             ELSE pg_catalog.jsonb_build_object('columns', i.columns::jsonb) END
        || CASE WHEN i.identity IS NULL THEN '{}' ELSE pg_catalog.jsonb_build_object('identity', i.identity::jsonb) END
    END,
    i.old_row::jsonb,
    CASE WHEN i.unchanged AND i.old_row IS NOT NULL THEN i.old_row::jsonb || i.new_row::jsonb ELSE i.new_row::jsonb END,
    i.new_nulls::jsonb
  FROM entries e
  LEFT JOIN LATERAL (
    SELECT * FROM bemi.parse_tuple(e.tuple, e.old_image, as_wal2json) WHERE e.tuple IS NOT NULL
    OFFSET 0 -- kept a subquery, so the WHERE spares B, C and M entries the call
  ) AS i ON true
  ORDER BY e.n, e.sub;
END;

-- The wal2json entries of the pending WAL, without consuming it (see bemi.decode).
CREATE FUNCTION bemi.peek(max_changes integer DEFAULT NULL)
RETURNS TABLE (lsn pg_lsn, xid xid, data jsonb)
LANGUAGE sql VOLATILE
BEGIN ATOMIC
  SELECT d.lsn, d.xid, d.data FROM bemi.decode(max_changes, true) AS d;
END;

CREATE VIEW bemi.wal AS SELECT * FROM bemi.peek();

COMMENT ON VIEW bemi.wal IS
  'Pending WAL entries of tracked tables, wal2json format-version 2 shaped, without consuming them.';

------------------------------------------------------------------------------------------
-- 6. Ingest: the audit trail, and the function that fills it from the slot exactly once.
--    A change is keyed by its WAL position, so decoding it again never stores it twice.
------------------------------------------------------------------------------------------

CREATE TABLE bemi.changes (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  database text NOT NULL DEFAULT pg_catalog.current_database(),
  schema text NOT NULL,
  "table" text NOT NULL,
  primary_key text,
  operation text NOT NULL CHECK (operation IN ('CREATE', 'UPDATE', 'DELETE', 'TRUNCATE')),
  before jsonb NOT NULL DEFAULT '{}',
  after jsonb NOT NULL DEFAULT '{}',
  context jsonb NOT NULL DEFAULT '{}',
  committed_at timestamptz NOT NULL,
  queued_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
  transaction_id bigint NOT NULL,
  position pg_lsn NOT NULL,
  ordinal integer NOT NULL,
  UNIQUE (position, ordinal)
);

CREATE INDEX changes_record_idx ON bemi.changes (schema, "table", primary_key);
CREATE INDEX changes_committed_at_idx ON bemi.changes (committed_at);
CREATE INDEX changes_context_idx ON bemi.changes USING gin (context jsonb_path_ops);

COMMENT ON TABLE bemi.changes IS 'The audit trail: one row per captured change, in commit order.';
COMMENT ON COLUMN bemi.changes.ordinal IS 'Which of the changes decoded from one WAL record (COPY, TRUNCATE) this is.';

SELECT pg_catalog.pg_extension_config_dump('bemi.changes', '');
SELECT pg_catalog.pg_extension_config_dump('bemi.changes_id_seq', '');

-- The NULL columns of a deleted row, as {"name": null, ...}: test_decoding leaves NULLs out of
-- old images, so they are the table's columns (as of now) that the image lacks, when every
-- printed column still exists by its name (none renamed or dropped since) and the column
-- existed then: it sits before a printed one, or its pg_attribute row is no newer than the
-- change's transaction. Without REPLICA IDENTITY FULL the image is just the key: nothing is added.
CREATE FUNCTION bemi.deleted_nulls(schema_name text, table_name text, old_row jsonb, xid bigint) RETURNS jsonb
LANGUAGE sql STABLE
BEGIN ATOMIC
  WITH printed AS (
    SELECT k.name FROM pg_catalog.jsonb_object_keys(old_row) AS k(name)
  ), live AS (
    SELECT a.attname::text AS name, a.attnum, a.xmin AS added, p.name IS NOT NULL AS printed
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN printed p ON p.name = a.attname
    WHERE n.nspname = schema_name AND c.relname = table_name AND c.relreplident = 'f'
  )
  SELECT coalesce(pg_catalog.jsonb_object_agg(l.name, NULL::jsonb), '{}')
  FROM live l
  WHERE NOT l.printed
    AND (SELECT pg_catalog.count(*) FROM live WHERE live.printed) = (SELECT pg_catalog.count(*) FROM printed)
    AND (l.attnum < (SELECT pg_catalog.max(live.attnum) FROM live WHERE live.printed)
         OR pg_catalog.age(l.added) >= pg_catalog.age(xid::text::pg_catalog.xid));
END;

-- The context carried by a message; text that is not a JSON object is kept, not lost.
CREATE FUNCTION bemi.context_json(content text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  parsed jsonb;
BEGIN
  parsed := content::jsonb;
  RETURN CASE WHEN pg_catalog.jsonb_typeof(parsed) = 'object' THEN parsed
    ELSE pg_catalog.jsonb_build_object('invalid_context', content) END;
EXCEPTION WHEN data_exception THEN
  RETURN pg_catalog.jsonb_build_object('invalid_context', content);
END
$$;

CREATE FUNCTION bemi.ingest(max_changes integer DEFAULT 10000) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  done pg_lsn;
  slot_at pg_lsn;
  ingested bigint;
  last_commit pg_lsn;
  -- The WAL also holds the rows the previous ingest stored: decode that many more entries,
  -- so a batch is not spent on them.
  own_rows bigint;
BEGIN
  IF max_changes IS NULL OR max_changes < 1 THEN
    RAISE EXCEPTION 'bemi: max_changes must be a positive number, not %', coalesce(max_changes::text, 'NULL')
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  -- One ingest at a time; a second one waits here, then carries on after the first.
  PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('bemi.ingest'));

  SELECT s.confirmed_flush_lsn INTO slot_at FROM pg_catalog.pg_replication_slots s
  WHERE s.slot_name = 'bemi' AND s.database = pg_catalog.current_database();
  IF NOT FOUND THEN
    RAISE EXCEPTION 'bemi: the replication slot "bemi" does not exist in database "%"', pg_catalog.current_database()
      USING ERRCODE = 'undefined_object', HINT = 'Create it with SELECT bemi.create_slot(); changes made before are not captured.';
  END IF;

  -- The slot moves only up to what an earlier, committed ingest has stored. Moving it is not
  -- undone by a rollback, so not up to what an ingest earlier in this transaction stored.
  SELECT p.lsn, p.stored INTO done, own_rows FROM bemi.progress p WHERE p.slot_name = 'bemi';
  IF done > slot_at AND coalesce(pg_catalog.current_setting('bemi.ingested', true), '') = '' THEN
    PERFORM pg_catalog.pg_replication_slot_advance('bemi', done);
  END IF;

  PERFORM bemi.remember_names();
  WITH entries AS MATERIALIZED (
    SELECT w.lsn, w.xid::text::bigint AS xid, w.data, w.data ->> 'action' AS action, w.n,
      w.old_row, w.new_row, w.new_nulls
    FROM bemi.decode(max_changes + own_rows::integer + 16, false) WITH ORDINALITY AS w(lsn, xid, data, old_row, new_row, new_nulls, n)
  ), stitched AS (
    -- Each change takes the context of the latest message before it in its transaction: a
    -- message opens a group, and the group's first row is that message (parsed once).
    SELECT e.*,
      pg_catalog.first_value(e.message) OVER (PARTITION BY e.xid, e.context_group ORDER BY e.n) AS context,
      pg_catalog.max((e.data ->> 'timestamp')::timestamptz) FILTER (WHERE e.action = 'C')
        OVER (PARTITION BY e.xid) AS committed_at
    FROM (
      SELECT e.*, pg_catalog.count(*) FILTER (WHERE e.action = 'M') OVER (PARTITION BY e.xid ORDER BY e.n) AS context_group,
        CASE WHEN e.action = 'M' THEN bemi.context_json(e.data ->> 'content') END AS message
      FROM entries e
    ) AS e
  ), widths AS (
    -- How many columns each table with deletes has now: a deleted row with as many has no NULLs.
    SELECT n.nspname::text AS schema, c.relname::text AS "table", pg_catalog.count(*) AS columns
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    WHERE (n.nspname::text, c.relname::text) IN
      (SELECT s.data ->> 'schema', s.data ->> 'table' FROM stitched s WHERE s.action = 'D')
    GROUP BY 1, 2
  ), changes AS (
    SELECT s.*,
      CASE WHEN s.old_row IS NULL THEN '{}'
        WHEN s.action = 'D' AND (SELECT pg_catalog.count(*) FROM pg_catalog.jsonb_object_keys(s.old_row)) < w.columns
          THEN bemi.deleted_nulls(s.data ->> 'schema', s.data ->> 'table', s.old_row, s.xid) || s.old_row
        WHEN s.action = 'D' THEN s.old_row
        ELSE coalesce(s.new_nulls, '{}') || s.old_row END AS before,
      coalesce(s.new_row, '{}') AS after
    FROM stitched s
    LEFT JOIN widths w ON w.schema = s.data ->> 'schema' AND w."table" = s.data ->> 'table'
    WHERE s.action IN ('I', 'U', 'D', 'T')
  ), inserted AS (
    INSERT INTO bemi.changes (schema, "table", primary_key, operation, before, after, context,
                              committed_at, transaction_id, position, ordinal)
    SELECT c.data ->> 'schema', c.data ->> 'table',
      CASE WHEN c.action = 'T' OR c.data -> 'pk' IS NULL THEN NULL
        WHEN pg_catalog.jsonb_array_length(c.data -> 'pk') = 1
          THEN (CASE WHEN c.action = 'D' THEN c.before ELSE c.after END) ->> (c.data -> 'pk' -> 0 ->> 'name')
        ELSE (SELECT pg_catalog.jsonb_agg((CASE WHEN c.action = 'D' THEN c.before ELSE c.after END) -> (k ->> 'name'))
              FROM pg_catalog.jsonb_array_elements(c.data -> 'pk') AS k)::text
      END,
      CASE c.action WHEN 'I' THEN 'CREATE' WHEN 'U' THEN 'UPDATE' WHEN 'D' THEN 'DELETE' ELSE 'TRUNCATE' END,
      c.before, c.after, coalesce(c.context, '{}'), c.committed_at, c.xid, c.lsn,
      pg_catalog.row_number() OVER (PARTITION BY c.lsn ORDER BY c.n)
    FROM changes c
    ORDER BY c.n
    ON CONFLICT (position, ordinal) DO NOTHING
    RETURNING 1
  )
  SELECT (SELECT pg_catalog.count(*) FROM inserted), (SELECT pg_catalog.max(e.lsn) FROM entries e WHERE e.action = 'C')
  INTO ingested, last_commit;

  IF last_commit > done THEN
    UPDATE bemi.progress SET lsn = last_commit, ingested_at = pg_catalog.now(), stored = ingested
    WHERE slot_name = 'bemi';
  END IF;
  -- The slot is advanced past these rows by the next ingest, so they must be on disk first.
  PERFORM pg_catalog.set_config('synchronous_commit', 'on', true);
  PERFORM pg_catalog.set_config('bemi.ingested', 'on', true);
  RETURN ingested;
END
$$;

COMMENT ON FUNCTION bemi.ingest(integer) IS
  'Moves pending changes from the slot into bemi.changes, exactly once; returns how many.';

------------------------------------------------------------------------------------------
-- 7. Privileges: anyone may set a context; decoding and ingest are for the worker role;
--    the trail is read-only to everyone but the extension's owner.
------------------------------------------------------------------------------------------

REVOKE ALL ON FUNCTION bemi.ingest(integer) FROM PUBLIC;
REVOKE ALL ON bemi.names FROM PUBLIC;
REVOKE ALL ON FUNCTION bemi.peek(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION bemi.decode(integer, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION bemi.create_slot() FROM PUBLIC;
REVOKE ALL ON FUNCTION bemi.drop_slot() FROM PUBLIC;
-- What is tracked is the administrator's choice, not the application's (docs/security.md).
REVOKE ALL ON FUNCTION bemi.track(regclass), bemi.untrack(regclass), bemi.track_all(name) FROM PUBLIC;
REVOKE ALL ON bemi.changes, bemi.progress, bemi.wal FROM PUBLIC;
GRANT USAGE ON SCHEMA bemi TO PUBLIC;
GRANT SELECT ON bemi.tracked TO PUBLIC;
