\echo Use "CREATE EXTENSION bemi" to load this file. \quit

-- bemi: automatic, context-aware change tracking.
--
-- This file is built from sql/src/ by the Makefile (make sql/bemi--<version>.sql): the files
-- there, read in order, are the one current definition of the extension. Edit them, not this.
-- Sections follow a change on its way: context, trigger, tracking, new tables, slot, decoding,
-- storing; then what reads the trail (time travel, revert), retention and uninstalling.
--
-- 00_header: the install-time check of wal_level, and the schema's privileges.

DO $$
BEGIN
  IF pg_catalog.current_setting('wal_level') <> 'logical' THEN
    RAISE WARNING 'bemi: wal_level is "%", changes cannot be decoded until it is "logical"',
      pg_catalog.current_setting('wal_level')
      USING HINT = 'ALTER SYSTEM SET wal_level = logical; then restart the server.';
  END IF;
END
$$;

-- Everyone may see what is in the schema; each object's own privileges say who may use it.
GRANT USAGE ON SCHEMA bemi TO PUBLIC;

------------------------------------------------------------------------------------------
-- 1. Context: the application says who, where and how, once per transaction.
--    It lives in a transaction-local setting, like SET LOCAL; nothing is written yet.
--    Holds: bemi.transaction_mark(), bemi.marked(text, text), bemi.context_limit(),
--    bemi.set_context(jsonb), bemi.use_context(text), bemi.context().
------------------------------------------------------------------------------------------

-- What marks the settings of this transaction: its start time, to the microsecond, as the 16
-- hex digits of the 8 bytes PostgreSQL keeps (whatever the session's DateStyle or TimeZone).
-- bemi.context and bemi.emitted hold this mark, then their value: a session-level SET of them
-- (or one a pooled server connection kept from another client) carries no mark of a later
-- transaction, so it never counts.
CREATE FUNCTION bemi.transaction_mark() RETURNS text
LANGUAGE sql STABLE
RETURN pg_catalog.encode(pg_catalog.timestamptz_send(pg_catalog.now()), 'hex');

-- The value of a marked setting when this transaction made it; '' otherwise. (mark: this
-- transaction's, for a caller that has it already.)
CREATE FUNCTION bemi.marked(setting text, mark text DEFAULT bemi.transaction_mark()) RETURNS text
LANGUAGE sql STABLE
RETURN CASE WHEN pg_catalog.starts_with(setting, mark) THEN pg_catalog.substr(setting, 17) ELSE '' END;

-- The most bytes a context may have: the setting bemi.max_context_bytes, 65536 when unset.
CREATE FUNCTION bemi.context_limit() RETURNS int4
LANGUAGE sql STABLE
RETURN CASE WHEN pg_catalog.current_setting('bemi.max_context_bytes', true) OPERATOR(pg_catalog.<>) ''
  THEN pg_catalog.current_setting('bemi.max_context_bytes', true)::pg_catalog.int4 ELSE 65536 END;

-- set_context runs once per transaction in the request path. Its cost is the statement, the
-- PL/pgSQL call and the JSON input (docs/benchmarks.md, counted by bench/server_cost.py): it
-- has no SET clause (which cost a sixth of each call, saving and restoring search_path) and
-- qualifies every name, operator and type instead, like the trigger; each expression it
-- evaluates is set up once per transaction, so there are few. After a write of this
-- transaction with another context, it emits the new context at once, so that a statement
-- whose trigger does not fire (disabled) does not carry the one before.
CREATE FUNCTION bemi.set_context(context jsonb) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
  body pg_catalog.text := context::pg_catalog.text;
  setting pg_catalog.text;
  written pg_catalog.pg_lsn;
BEGIN
  IF pg_catalog.jsonb_typeof(context) OPERATOR(pg_catalog.<>) 'object' THEN
    RAISE EXCEPTION 'bemi: context must be a JSON object, not %', pg_catalog.jsonb_typeof(context)
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass an object such as {"user_id": 7}, or NULL to clear.';
  END IF;
  IF pg_catalog.octet_length(body) OPERATOR(pg_catalog.>) bemi.context_limit() THEN
    RAISE EXCEPTION 'bemi: context is % bytes, over the limit of % bytes', pg_catalog.octet_length(body), bemi.context_limit()
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Keep contexts small, or raise the setting bemi.max_context_bytes.';
  END IF;
  -- NULL and an empty object are no context at all. An assignment, not PERFORM: PL/pgSQL
  -- evaluates it as a simple expression, without running a query.
  -- It is stored as '' (unmarked: nothing set), so that a marked bemi.context always holds one.
  body := pg_catalog.substr(pg_catalog.set_config('bemi.context', CASE WHEN body IS NULL OR body OPERATOR(pg_catalog.=) '{}' THEN ''
    ELSE bemi.transaction_mark() OPERATOR(pg_catalog.||) body END, true), 17);
  setting := bemi.marked(pg_catalog.current_setting('bemi.emitted', true));
  IF setting OPERATOR(pg_catalog.<>) '' AND setting OPERATOR(pg_catalog.<>) body THEN
    written := pg_catalog.pg_logical_emit_message(true, 'bemi', CASE WHEN body OPERATOR(pg_catalog.=) '' THEN '{}' ELSE body END);
    setting := pg_catalog.set_config('bemi.emitted', bemi.transaction_mark() OPERATOR(pg_catalog.||) body, true);
  END IF;
END
$$;

COMMENT ON FUNCTION bemi.set_context(jsonb) IS
  'Sets the application context of the current transaction (a JSON object; NULL clears).';

-- use_context is set_context for the request path, what bemi_pg.with_context sends with BEGIN:
-- CALL of a procedure, not SELECT of a function, runs no planner and no executor for the
-- statement (docs/benchmarks.md: about 25k instructions less), and the context is kept as the
-- text it came as (parsed to check it, never printed back). Its own work is two expressions:
-- the check that the context is one plain JSON object of at most the size limit, and the
-- marked set_config. Everything else (NULL, {}, a bad or oversized context, a context set
-- after a write, which must be emitted at once) goes to set_context, which raises the same
-- errors.
CREATE PROCEDURE bemi.use_context(context text)
LANGUAGE plpgsql
AS $$
BEGIN
  -- An object with a key has a colon, the empty object none. jsonb, not json: it refuses what
  -- set_context refuses (\u0000, a number beyond numeric, a lone surrogate), which json lets
  -- through and ingest could not store. Any bemi.emitted sends the call to set_context, which
  -- tells by its mark whether this transaction wrote before (cheaper than the mark here).
  IF context IS NULL OR pg_catalog.strpos(context, ':') OPERATOR(pg_catalog.=) 0
     OR pg_catalog.octet_length(context) OPERATOR(pg_catalog.>) bemi.context_limit()
     OR pg_catalog.jsonb_typeof(context::pg_catalog.jsonb) OPERATOR(pg_catalog.<>) 'object'
     OR pg_catalog.current_setting('bemi.emitted', true) OPERATOR(pg_catalog.<>) '' THEN
    PERFORM bemi.set_context(context::pg_catalog.jsonb);
    RETURN;
  END IF;
  context := pg_catalog.set_config('bemi.context', bemi.transaction_mark() OPERATOR(pg_catalog.||) context, true);
END
$$;

COMMENT ON PROCEDURE bemi.use_context(text) IS
  'set_context for the request path: CALL bemi.use_context(''{"user_id": 7}'') (a JSON object as text; NULL clears).';

-- Only a context this transaction set counts.
CREATE FUNCTION bemi.context() RETURNS jsonb
LANGUAGE sql STABLE
RETURN NULLIF(bemi.marked(pg_catalog.current_setting('bemi.context', true)), '')::pg_catalog.jsonb;

COMMENT ON FUNCTION bemi.context() IS 'The application context in effect now, or NULL.';

------------------------------------------------------------------------------------------
-- 2. The context trigger: before each statement on a tracked table, put the context into
--    the WAL, once, and only when it differs from the last one this transaction emitted.
--    Holds: bemi.comment_context(text, text), bemi.statement_text(text), bemi.partition_event(oid, text, oid),
--    bemi.context_trigger().
------------------------------------------------------------------------------------------

-- The context of a statement's trailing /*Bemi {...} Bemi*/ comment, as written; '' when there
-- is none that counts. For EXECUTE of a statement prepared with PREPARE, the PREPARE's comment.
-- The rules (docs/frameworks.md): the comment must end the query string (a string literal
-- cannot end with */, so data cannot pose as context); it counts only when the query string
-- holds one statement (no ; before it: current_query() is the whole string, so in
-- "INSERT ...; INSERT ... /*Bemi ... Bemi*/" no statement could be told its own), and not when
-- it sits behind a -- on its line. A comment written exactly like emitted (what this
-- transaction last emitted), the usual case for the second and later writes of a
-- transaction, is returned without parsing it again. A bad comment is a WARNING, never an
-- error. Its cost is per statement (docs/benchmarks.md): the query string is searched byte by
-- byte (split_part, and strpos for what it does not hold), never counted in characters, and
-- only the comment's own text is trimmed and cut.
CREATE FUNCTION bemi.comment_context(query text, emitted text) RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
  tail pg_catalog.text := pg_catalog.split_part(query, '/*Bemi', -1);
  body pg_catalog.text;
  head pg_catalog.text;
  parsed pg_catalog.jsonb;
BEGIN
  IF tail OPERATOR(pg_catalog.=) query THEN  -- no /*Bemi in it
    query := bemi.statement_text(query);
    tail := pg_catalog.split_part(query, '/*Bemi', -1);
    IF tail OPERATOR(pg_catalog.=) query THEN
      RETURN '';
    END IF;
  END IF;
  -- What follows the query's last /*Bemi: the comment's body, Bemi*/, then only blanks and ;.
  tail := pg_catalog.rtrim(tail, E' \t\r\n;');
  body := CASE WHEN pg_catalog.right(tail, 6) OPERATOR(pg_catalog.=) 'Bemi*/'
    THEN pg_catalog.btrim(pg_catalog.left(tail, -6), E' \t\r\n') END;
  IF body IS NULL OR pg_catalog.strpos(query, ';') OPERATOR(pg_catalog.>) 0 OR pg_catalog.strpos(query, '--') OPERATOR(pg_catalog.>) 0 THEN
    IF body IS NULL THEN
      IF tail OPERATOR(pg_catalog.=) '*/' THEN  -- /*Bemi*/
        RAISE WARNING 'bemi: ignoring a /*Bemi ... Bemi*/ comment that is not JSON: '
          USING ERRCODE = 'invalid_text_representation';
      END IF;
      RETURN '';
    END IF;
    -- Outside string literals, quoted names and block comments, the query before the comment
    -- holds no ; (one statement), and its last line no -- (the comment would be in a line comment).
    head := pg_catalog.left(query, pg_catalog.length(query)
      OPERATOR(pg_catalog.-) pg_catalog.length(pg_catalog.split_part(query, '/*Bemi', -1)) OPERATOR(pg_catalog.-) 6);
    IF pg_catalog.strpos(head, ';') OPERATOR(pg_catalog.>) 0
       OR pg_catalog.strpos(pg_catalog.split_part(head, E'\n', -1), '--') OPERATOR(pg_catalog.>) 0 THEN
      head := pg_catalog.regexp_replace(head,
        $re$[eE]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*'|"(?:[^"]|"")*"|/\*[^*]*\*+(?:[^/*][^*]*\*+)*/$re$, '', 'g');
      IF pg_catalog.strpos(head, ';') OPERATOR(pg_catalog.>) 0
         OR pg_catalog.strpos(pg_catalog.split_part(head, E'\n', -1), '--') OPERATOR(pg_catalog.>) 0 THEN
        RETURN '';
      END IF;
    END IF;
  END IF;
  IF body OPERATOR(pg_catalog.=) emitted AND body OPERATOR(pg_catalog.<>) '' THEN
    RETURN body;
  END IF;
  IF pg_catalog.octet_length(body) OPERATOR(pg_catalog.>) bemi.context_limit() THEN
    RAISE WARNING 'bemi: ignoring a /*Bemi ... Bemi*/ comment over the limit of % bytes', bemi.context_limit()
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

COMMENT ON FUNCTION bemi.comment_context(text, text) IS
  'The context of a statement''s trailing /*Bemi {...} Bemi*/ comment as written, or '''' (WARNING when malformed).';

-- The query string a statement came from: for EXECUTE of a statement prepared with PREPARE,
-- the PREPARE (its /*Bemi ... Bemi*/ comment is the statement's).
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

-- Rows of a partition that leave or join its root without a change of their own: TRUNCATE of
-- the partition alone (pgoutput, publishing through the root, sends no TRUNCATE for it),
-- DETACH and ATTACH. Written to the WAL as a transactional message with the prefix
-- 'bemi.truncate', which both ingest paths store as a TRUNCATE of the root whose before names
-- the partition: {"partition_schema", "partition", "event": truncate | detach | attach}
-- (docs/time-travel.md, "Partitions"). root: the root it left (DETACH), else the root it is
-- under now (NULL: nothing, for a table that is not a partition).
CREATE FUNCTION bemi.partition_event(relation oid, event text, root oid DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  root := coalesce(root, (
    WITH RECURSIVE up(member, depth) AS (
      SELECT relation, 0
      UNION ALL
      SELECT i.inhparent, u.depth + 1 FROM up AS u
      JOIN pg_catalog.pg_class AS c ON c.oid = u.member AND c.relispartition
      JOIN pg_catalog.pg_inherits AS i ON i.inhrelid = u.member
    )
    SELECT u.member FROM up AS u WHERE u.depth > 0 ORDER BY u.depth DESC LIMIT 1));
  IF root IS NULL THEN
    RETURN;
  END IF;
  PERFORM pg_catalog.pg_logical_emit_message(true, 'bemi.truncate', pg_catalog.jsonb_build_object(
    'relid', r.oid::bigint, 'schema', rn.nspname, 'table', r.relname, 'partition_schema', pn.nspname, 'partition', p.relname,
    'event', event)::text)
  FROM pg_catalog.pg_class AS p JOIN pg_catalog.pg_namespace AS pn ON pn.oid = p.relnamespace,
    pg_catalog.pg_class AS r JOIN pg_catalog.pg_namespace AS rn ON rn.oid = r.relnamespace
  WHERE p.oid = relation AND r.oid = root;
END
$$;

-- The common path first: a context this transaction set (bemi.context holds this
-- transaction's mark and the context after it; set_context stores a cleared one as '') is
-- emitted unless it is what was emitted last (bemi.emitted holds the same marked text then).
-- Otherwise, without a set_context in the transaction, the statement's own /*Bemi ... Bemi*/
-- comment is the context: one current_query() read and one byte search per statement, never
-- per row. bemi.context and bemi.emitted count only when they hold this transaction's mark.
-- Remembering what was emitted (a transaction-local set_config, only when emitting) is what
-- keeps emissions to the changes of context. Assignments, not PERFORM: PL/pgSQL evaluates them
-- as simple expressions instead of running a query for each. Setting those up, once per
-- transaction for each function they call, is most of what the trigger costs
-- (docs/benchmarks.md), so the common path evaluates few, and the mark once. STABLE: the
-- trigger changes no table (partition_event, which emits a message, is its own function), so
-- PL/pgSQL evaluates its expressions without a new snapshot for each.
CREATE FUNCTION bemi.context_trigger() RETURNS trigger
LANGUAGE plpgsql STABLE
AS $$
DECLARE
  pending pg_catalog.text := pg_catalog.current_setting('bemi.context', true);
  emitted pg_catalog.text := pg_catalog.current_setting('bemi.emitted', true);
  mark pg_catalog.text := bemi.transaction_mark();
  query pg_catalog.text;
  written pg_catalog.pg_lsn;
BEGIN
  -- Operators are qualified: this runs with the writer's search_path (docs/security.md).
  IF pg_catalog.starts_with(pending, mark) THEN
    IF pending OPERATOR(pg_catalog.<>) COALESCE(emitted, '') THEN
      written := pg_catalog.pg_logical_emit_message(true, 'bemi',
        pg_catalog.substr(pg_catalog.set_config('bemi.emitted', pending, true), 17));
    END IF;
  ELSE
    emitted := bemi.marked(emitted, mark);
    query := pg_catalog.current_query();
    -- A comment, or EXECUTE of a statement prepared with PREPARE (starting with e, E or a blank).
    pending := CASE WHEN pg_catalog.split_part(query, '/*Bemi', -1) OPERATOR(pg_catalog.<>) query
        OR pg_catalog.strpos(E'Ee \t\n', pg_catalog.left(query, 1)) OPERATOR(pg_catalog.>) 0
      THEN bemi.comment_context(query, emitted) ELSE '' END;
    IF pending OPERATOR(pg_catalog.<>) emitted THEN
      written := pg_catalog.pg_logical_emit_message(true, 'bemi',
        CASE WHEN pending OPERATOR(pg_catalog.=) '' THEN '{}' ELSE pending END);
      query := pg_catalog.set_config('bemi.emitted', mark OPERATOR(pg_catalog.||) pending, true);
    END IF;
  END IF;
  IF TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN
    PERFORM bemi.partition_event(TG_RELID, 'truncate');
  END IF;
  RETURN NULL;
END
$$;

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

------------------------------------------------------------------------------------------
-- 5. The slot: one logical slot per database (pgoutput, over the publication "bemi"),
--    keeping the WAL until it is stored.
--    Holds: bemi.slot_name(), bemi.progress, bemi.gaps, bemi.open_gap(), bemi.close_gaps(),
--    bemi.note_gap(), bemi.coverage_report(), bemi.coverage, bemi.trail_location, bemi.trail_stored_in(),
--    bemi.refuse_trail_elsewhere(), bemi.move_trail_to(), bemi.trail_here(), bemi.create_slot(), bemi.drop_slot().
------------------------------------------------------------------------------------------

-- The slot of this database: slot names are cluster-wide, so each database has its own.
CREATE FUNCTION bemi.slot_name() RETURNS name
LANGUAGE sql STABLE
RETURN ('bemi_' || (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()))::name;

COMMENT ON FUNCTION bemi.slot_name() IS 'The name of this database''s logical slot: bemi_<database oid>.';

CREATE TABLE bemi.progress (
  slot_name name PRIMARY KEY,
  lsn pg_lsn NOT NULL,
  ingested_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  stored bigint NOT NULL DEFAULT 0,
  committed_at timestamptz,
  caught_up_at timestamptz,
  part_of pg_lsn,
  part_stored bigint NOT NULL DEFAULT 0,
  part_transaction bigint
);

COMMENT ON TABLE bemi.progress IS
  'Per slot: the end of the last transaction whose changes are all stored (the slot may be confirmed up to here), a transaction stored in parts so far, and how current the trail is.';
COMMENT ON COLUMN bemi.progress.part_of IS 'The commit LSN of a transaction stored in parts; part_stored of its changes are stored.';
COMMENT ON COLUMN bemi.progress.caught_up_at IS 'Every transaction committed up to this time is stored.';
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
  ELSIF EXISTS (SELECT FROM bemi.gaps g WHERE g.slot_name = note_gap.slot AND g.relation IS NULL
                AND g.cause = note_gap.cause AND g.to_lsn = note_gap.to_lsn) THEN
    RETURN NULL;  -- recorded already (by a worker that stopped before it went on)
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

-- Where the trail of a slot is stored when it is not here: in a trail database (bemi-pg worker
-- --trail-dsn), named by its server's system identifier and its name, recorded when a worker
-- starts storing there. While a row says so, nothing stores into this database's own trail
-- (bemi.ingest(), a worker without --trail-dsn) nor into another trail database: the trail
-- never splits. No row: the trail is here. bemi.trail_here() brings it back.
CREATE TABLE bemi.trail_location (
  slot_name name PRIMARY KEY,
  system_identifier bigint NOT NULL,
  database name NOT NULL,
  since timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);

COMMENT ON TABLE bemi.trail_location IS
  'Per slot: the trail database its trail is stored in (system identifier and name) and since when; no row: here.';
SELECT pg_catalog.pg_extension_config_dump('bemi.trail_location', '');

-- Where the trail of a slot is stored (no row: here).
-- SECURITY DEFINER: every worker, whatever its grants, and bemi-pg status must know where the
-- trail is; it tells a server's system identifier and a database name.
CREATE FUNCTION bemi.trail_stored_in(slot name DEFAULT bemi.slot_name())
RETURNS TABLE (system_identifier bigint, database name, since timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
  SELECT l.system_identifier, l.database, l.since FROM bemi.trail_location l WHERE l.slot_name = trail_stored_in.slot;
END;

COMMENT ON FUNCTION bemi.trail_stored_in(name) IS
  'The trail database the trail of a slot is stored in (no row: here, in this database).';

-- Raises (ZB003) unless the trail of the slot is stored where the caller would store it: here
-- (system_identifier NULL), or in the trail database named. Not recorded anywhere: here.
CREATE FUNCTION bemi.refuse_trail_elsewhere(slot name, system_identifier bigint DEFAULT NULL, database name DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  place record;
BEGIN
  SELECT l.system_identifier, l.database, l.since INTO place FROM bemi.trail_location l WHERE l.slot_name = slot;
  IF FOUND AND (place.system_identifier, place.database)
      IS DISTINCT FROM (refuse_trail_elsewhere.system_identifier, refuse_trail_elsewhere.database) THEN
    RAISE EXCEPTION 'bemi: the trail of database "%" is stored in the trail database "%" (system identifier %) since %: storing it % would split it',
      pg_catalog.current_database(), place.database, place.system_identifier, place.since,
      CASE WHEN refuse_trail_elsewhere.database IS NULL THEN 'here'
        ELSE pg_catalog.format('in "%s" (system identifier %s)', refuse_trail_elsewhere.database, refuse_trail_elsewhere.system_identifier) END
      USING ERRCODE = 'ZB003',
            HINT = 'Run bemi-pg worker with --trail-dsn naming that database. To bring the trail back here, stop the worker and, as the extension''s owner, SELECT bemi.trail_here(); (or bemi-pg worker --trail-here).';
  END IF;
END
$$;

-- The trail database a worker stores into (bemi-pg worker --trail-dsn), recorded as it starts:
-- true when the trail moves there now (it was here), false when it is there already; refused
-- (ZB003) when another trail database holds it. After a bemi.ingest() under way, which stores
-- here; the next one refuses.
-- SECURITY DEFINER: the worker's role records where it stores; it may not write bemi.trail_location.
CREATE FUNCTION bemi.move_trail_to(system_identifier bigint, database name) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF system_identifier IS NULL OR database IS NULL THEN
    RAISE EXCEPTION 'bemi: a trail database is named by its system identifier and its name, both given'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('bemi.ingest'));
  PERFORM bemi.refuse_trail_elsewhere(bemi.slot_name(), system_identifier, database);
  INSERT INTO bemi.trail_location (slot_name, system_identifier, database)
  VALUES (bemi.slot_name(), move_trail_to.system_identifier, move_trail_to.database)
  ON CONFLICT (slot_name) DO NOTHING;
  RETURN FOUND;
END
$$;

COMMENT ON FUNCTION bemi.move_trail_to(bigint, name) IS
  'Records that the trail of this database''s slot is stored in a trail database from now on (bemi-pg worker --trail-dsn).';

-- Brings the trail of this database's slot back here from the trail database it was stored
-- in: the changes stored there are not in this trail, a gap (trail moved) up to where the
-- slot is confirmed, and this trail goes on from there. Refused while a worker ingests (stop
-- it first; one stopping is waited for, 5 seconds at most). Returns where this trail goes on;
-- NULL when the trail was here already.
CREATE FUNCTION bemi.trail_here() RETURNS pg_lsn
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  slot name := bemi.slot_name();
  place record;
  confirmed pg_lsn;
BEGIN
  PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('bemi.ingest'));
  -- A worker that was just stopped lets go of its lock and the slot within moments.
  FOR attempt IN 1..100 LOOP
    EXIT WHEN pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('bemi.worker'))
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = slot AND s.active);
    IF attempt = 100 THEN
      RAISE EXCEPTION 'bemi: a worker is ingesting database "%": stop it before bringing the trail back', pg_catalog.current_database()
        USING ERRCODE = 'object_in_use';
    END IF;
    PERFORM pg_catalog.pg_sleep(0.05);
  END LOOP;
  DELETE FROM bemi.trail_location l WHERE l.slot_name = slot RETURNING l.system_identifier, l.database INTO place;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  SELECT s.confirmed_flush_lsn INTO confirmed FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = slot;
  IF confirmed > (SELECT p.lsn FROM bemi.progress p WHERE p.slot_name = slot) THEN
    PERFORM bemi.open_gap(slot, 'trail moved', NULL, NULL, NULL, confirmed, pg_catalog.clock_timestamp(),
      pg_catalog.format('the trail was stored in the trail database %I (system identifier %s) up to %s: those changes are there, not here',
        place.database, place.system_identifier, confirmed));
    UPDATE bemi.progress p SET lsn = confirmed, part_of = NULL, part_stored = 0, part_transaction = NULL
    WHERE p.slot_name = slot;
  END IF;
  RETURN confirmed;
END
$$;

COMMENT ON FUNCTION bemi.trail_here() IS
  'Brings the trail of this database''s slot back here from its trail database (a gap, trail moved, for what is stored there).';

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

CREATE FUNCTION bemi.create_slot() RETURNS pg_lsn
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

COMMENT ON FUNCTION bemi.create_slot() IS
  'Creates this database''s logical slot (pgoutput over the publication bemi); changes are captured from here on. Drains a 1.0 slot first.';

CREATE FUNCTION bemi.drop_slot() RETURNS void
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

REVOKE ALL ON FUNCTION bemi.create_slot(), bemi.drop_slot() FROM PUBLIC;
REVOKE ALL ON bemi.progress, bemi.gaps, bemi.coverage FROM PUBLIC;
REVOKE ALL ON FUNCTION bemi.coverage_report(name), bemi.note_gap(name, text, pg_lsn, pg_lsn, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION bemi.open_gap(name, text, oid, pg_lsn, timestamptz, pg_lsn, timestamptz, text),
  bemi.close_gaps(name, pg_lsn, timestamptz, oid) FROM PUBLIC;
REVOKE ALL ON bemi.trail_location FROM PUBLIC;
REVOKE ALL ON FUNCTION bemi.trail_stored_in(name), bemi.refuse_trail_elsewhere(name, bigint, name),
  bemi.move_trail_to(bigint, name), bemi.trail_here() FROM PUBLIC;
-- Where the trail is, no secret: every worker role and bemi-pg status read it.
GRANT EXECUTE ON FUNCTION bemi.trail_stored_in(name) TO PUBLIC;

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

------------------------------------------------------------------------------------------
-- 7. Storing: both readers stage changes with their values as text; one converter turns
--    them into typed JSON with the server's own input functions and stores them once.
--    Holds: bemi.changes, bemi.partition_interval(), bemi.period_start(), bemi.partitions,
--    bemi.index_partition(), bemi.create_partitions(), bemi.staged_relations, bemi.staged,
--    bemi.read_type(), bemi.type_changed_at(), bemi.column_type(), bemi.portable_type(), bemi.describe_relation(), bemi.image_sql(),
--    bemi.primary_key_sql(), bemi.context_json(), bemi.staged_contexts(), bemi.convert_sql(),
--    bemi.store(), bemi.wal_mark(), bemi.flushed_past(), bemi.check_slot(), bemi.ingest(), bemi.peek(),
--    bemi.ingested_until(), bemi.wal.
------------------------------------------------------------------------------------------

-- The trail, range-partitioned by commit time, so that old history goes as whole partitions
-- (bemi.retain) and never by DELETE. The partition interval is the setting
-- bemi.partition_interval (default 1 month); ingest creates partitions as it needs them and
-- one ahead. Its keys and indexes are each partition's own (bemi.index_partition, below).
CREATE TABLE bemi.changes (
  id bigint GENERATED ALWAYS AS IDENTITY,
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
  problem text,
  partial boolean NOT NULL DEFAULT false,
  previous_key text
) PARTITION BY RANGE (committed_at);

COMMENT ON TABLE bemi.changes IS 'The audit trail: one row per captured change, in commit order (partitioned by committed_at).';
COMMENT ON COLUMN bemi.changes.ordinal IS 'Which of the changes decoded from one WAL record (COPY, TRUNCATE) this is.';
COMMENT ON COLUMN bemi.changes.problem IS
  'Why the values could not be converted (they are stored as JSON strings), or NULL.';
COMMENT ON COLUMN bemi.changes.partial IS
  'The WAL held only part of the old row (its key): before has just what was known.';
COMMENT ON COLUMN bemi.changes.previous_key IS
  'The primary key before an UPDATE that changed it (primary_key holds the new one), else NULL.';

-- The rows are in the partitions, which belong to no extension (ingest makes them, after
-- CREATE EXTENSION): pg_dump keeps them as it keeps any table (docs/backup.md).
SELECT pg_catalog.pg_extension_config_dump('bemi.changes', '');
SELECT pg_catalog.pg_extension_config_dump('bemi.changes_id_seq', '');

-- The partition interval: the setting bemi.partition_interval, by default a month.
CREATE FUNCTION bemi.partition_interval() RETURNS interval
LANGUAGE sql STABLE
RETURN coalesce(nullif(pg_catalog.current_setting('bemi.partition_interval', true), ''), '1 month')::interval;

-- Where the period of a commit time begins: whole months counted from 2000-01 (UTC) for an
-- interval of months or years, else whole intervals counted from 2000-01-01 UTC.
CREATE FUNCTION bemi.period_start(at timestamptz, step interval) RETURNS timestamptz
LANGUAGE sql IMMUTABLE
RETURN CASE
  WHEN pg_catalog.date_part('day', step) = 0 AND pg_catalog.date_part('hour', step) = 0
   AND pg_catalog.date_part('minute', step) = 0 AND pg_catalog.date_part('second', step) = 0
  THEN (SELECT pg_catalog.make_timestamptz(2000, 1, 1, 0, 0, 0, 'UTC')
          + pg_catalog.make_interval(months => (m.n - pg_catalog.mod(pg_catalog.mod(m.n, m.per) + m.per, m.per))::integer)
        FROM (SELECT ((pg_catalog.date_part('year', at AT TIME ZONE 'UTC') - 2000) * 12
                      + pg_catalog.date_part('month', at AT TIME ZONE 'UTC') - 1)::bigint AS n,
                     (pg_catalog.date_part('year', step) * 12 + pg_catalog.date_part('month', step))::bigint AS per) AS m)
  ELSE pg_catalog.to_timestamp(pg_catalog.floor((pg_catalog.date_part('epoch', at) - 946684800) / pg_catalog.date_part('epoch', step))
         * pg_catalog.date_part('epoch', step) + 946684800)
END;

-- The partitions of the trail with their bounds (whoever created them: ingest or pg_partman).
CREATE VIEW bemi.partitions AS
SELECT c.oid::pg_catalog.regclass AS partition,
  pg_catalog.substring(pg_catalog.pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)')::timestamptz AS from_at,
  pg_catalog.substring(pg_catalog.pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)')::timestamptz AS to_at
FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'bemi.changes'::pg_catalog.regclass
  AND pg_catalog.pg_get_expr(c.relpartbound, c.oid) LIKE 'FOR VALUES FROM%';

COMMENT ON VIEW bemi.partitions IS 'The partitions of bemi.changes and the commit times each holds (from_at inclusive, to_at exclusive).';

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

-- Creates the partitions of the periods from one commit time to another that no partition
-- holds yet: tables attached to the trail (ATTACH does not block readers of the trail), each
-- with its keys and indexes. Returns them.
CREATE FUNCTION bemi.create_partitions(from_at timestamptz, to_at timestamptz) RETURNS SETOF regclass
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
  identity boolean[] NOT NULL,
  -- Set only by a reader that stores into a trail in another database (bemi-pg worker
  -- --trail-dsn), from bemi.describe_relation in the source: NULL means "look it up here".
  type_names text[],
  key_columns text[],
  ignore_columns text[],
  mask_columns text[]
);

-- Every store leaves its staged rows dead: autovacuum clears them early, whatever the table's size.
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

ALTER TABLE bemi.staged SET (autovacuum_vacuum_threshold = 20000, autovacuum_vacuum_scale_factor = 0,
  autovacuum_vacuum_cost_delay = 0);
ALTER TABLE bemi.staged_relations SET (autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_scale_factor = 0);

-- The type a staged value is read as, so that reading it runs no code a role less trusted
-- than bemi wrote, and gives JSON that jsonb_populate_record reads back (docs/security.md).
-- The value was valid when it was written, so it is read by built-in code only:
--   built-in types as they are, with their modifier (character(3)[] keeps its length);
--   domains as their base type (their CHECKs held when the row was written);
--   enums, ranges and multiranges a role defined as text (to_jsonb makes them that string);
--   arrays by their element type;
--   a type with a cast to json or jsonb as text: to_jsonb would run the cast, a role's code
--     whose JSON jsonb_populate_record cannot read back (hstore's object, say);
--   other types (composite, or an extension's) as they are when every attribute is read as
--     itself, else as text, which jsonb_populate_record reads back;
--   text when the type is gone since.
-- Base types and their input functions need a superuser to create; the rest does not.
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

-- The last time a type, or a type within it (a domain's base, an array's element, a
-- composite's attributes, at any depth), changed its attributes (bemi.type_changes); NULL: never.
CREATE FUNCTION bemi.type_changed_at(type oid) RETURNS pg_lsn
LANGUAGE sql STABLE
BEGIN ATOMIC
  WITH RECURSIVE within(oid) AS (
    SELECT type_changed_at.type
    UNION
    SELECT x.oid FROM within AS w JOIN pg_catalog.pg_type AS t ON t.oid = w.oid,
      LATERAL (SELECT t.typbasetype WHERE t.typtype = 'd'
               UNION ALL SELECT t.typelem WHERE t.typelem <> 0 AND t.typlen = -1
               UNION ALL SELECT a.atttypid FROM pg_catalog.pg_attribute AS a
                         WHERE a.attrelid = t.typrelid AND t.typrelid <> 0 AND a.attnum > 0 AND NOT a.attisdropped) AS x(oid)
  )
  SELECT pg_catalog.max(c.since) FROM bemi.type_changes AS c JOIN within AS w ON w.oid = c.type;
END;

-- The type a column is read as: bemi.read_type of its type. In a trail database, of the type
-- the source named, when this database has a type of that name, else text.
CREATE FUNCTION bemi.column_type(type oid, typmod integer, source_name text DEFAULT NULL) RETURNS text
LANGUAGE sql STABLE
RETURN CASE
  WHEN source_name IS NULL THEN bemi.read_type(type, typmod)
  WHEN pg_catalog.to_regtype(source_name) IS NULL THEN CASE WHEN source_name LIKE '%[]' THEN 'text[]' ELSE 'text' END
  WHEN bemi.read_type(pg_catalog.to_regtype(source_name), -1) = pg_catalog.format_type(pg_catalog.to_regtype(source_name), -1)
    THEN source_name
  ELSE bemi.read_type(pg_catalog.to_regtype(source_name), -1) END;

-- A column's type as a trail in another database can read it: domains as their base type
-- (arrays of them too), other types by their schema-qualified name.
CREATE FUNCTION bemi.portable_type(type oid, typmod integer) RETURNS text
LANGUAGE sql STABLE
BEGIN ATOMIC
  WITH RECURSIVE chain(oid, typmod, array_of) AS (
    SELECT CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN t.typelem ELSE t.oid END, typmod,
      t.typcategory = 'A' AND t.typelem <> 0
    FROM pg_catalog.pg_type t WHERE t.oid = type
    UNION ALL
    SELECT t.typbasetype, CASE WHEN t.typtypmod <> -1 THEN t.typtypmod ELSE c.typmod END, c.array_of
    FROM chain c JOIN pg_catalog.pg_type t ON t.oid = c.oid WHERE t.typtype = 'd'
  )
  SELECT pg_catalog.format_type(c.oid, c.typmod) || CASE WHEN c.array_of THEN '[]' ELSE '' END
  FROM chain c JOIN pg_catalog.pg_type t ON t.oid = c.oid WHERE t.typtype <> 'd';
END;

-- What a reader storing into a trail in another database needs to know of a relation, from
-- this (the source) database: portable type names, primary key and column rules. It reads
-- bemi.tracking and bemi.keys as the extension's owner, so that worker role needs EXECUTE on
-- it alone here (docs/trail-database.md).
CREATE FUNCTION bemi.describe_relation(relid oid, types oid[], typmods integer[], at pg_lsn,
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

-- The SQL expression of one row image as jsonb, from a text[] expression holding its values:
-- each value read as bemi.column_type says, and to_jsonb's rules make the JSON. Chunks of 50
-- columns, as a function takes at most 100 arguments. Masked columns are "[masked]". An array
-- whose bounds are not the default ([0:1]={1,2}) stays text: a JSON array would lose them.
CREATE FUNCTION bemi.image_sql(columns text[], types oid[], typmods integer[], type_names text[], vals text, masked text[])
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

-- The trail's primary_key of a relation's changes, from the key columns it had then: the value
-- as text for one column, a JSON array text for several, NULL without one.
CREATE FUNCTION bemi.primary_key_sql(key_columns text[], image text) RETURNS text
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT CASE coalesce(pg_catalog.cardinality(k.columns), 0)
    WHEN 0 THEN 'NULL::text'
    WHEN 1 THEN pg_catalog.format('(%s) ->> %L', image, k.columns[1])
    ELSE 'pg_catalog.jsonb_build_array(' || (SELECT pg_catalog.string_agg(pg_catalog.format('(%s) -> %L', image, c), ', ' ORDER BY o)
      FROM pg_catalog.unnest(k.columns) WITH ORDINALITY AS u(c, o)) || ')::text'
  END
  FROM (SELECT key_columns AS columns) AS k;
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

-- The context of each message content staged, parsed once: {"content": context, ...}. The
-- converter's queries take it as their parameter $1. All in one statement; only when some
-- content is not JSON (a message no bemi trigger wrote), one by one.
CREATE FUNCTION bemi.staged_contexts() RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  careful boolean;
BEGIN
  FOREACH careful IN ARRAY ARRAY[false, true] LOOP
    BEGIN
      RETURN (SELECT coalesce(pg_catalog.jsonb_object_agg(c.content, CASE WHEN careful THEN bemi.context_json(c.content)
                WHEN pg_catalog.jsonb_typeof(c.content::jsonb) = 'object' THEN c.content::jsonb
                ELSE pg_catalog.jsonb_build_object('invalid_context', c.content) END), '{}')
              FROM (SELECT DISTINCT s.context FROM bemi.staged s WHERE s.context IS NOT NULL) AS c(content));
    EXCEPTION WHEN data_exception THEN
      IF careful THEN
        RAISE;
      END IF;
    END;
  END LOOP;
END
$$;

-- The query that converts the staged changes of one relation into rows of bemi.changes (in
-- seq order, with seq). When converting fails, row_filter picks single changes, and as_text
-- keeps the values as JSON strings, so a change that cannot be converted is still stored.
CREATE FUNCTION bemi.convert_sql(r bemi.staged_relations, row_filter text DEFAULT 'true', as_text boolean DEFAULT false)
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
  -- Columns whose type is gone since (dropped with changes pending): their values are kept as text, marked.
  gone text := (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(r.columns[i]), ', ' ORDER BY i)
    FROM pg_catalog.generate_subscripts(r.columns, 1) AS i
    WHERE CASE WHEN r.type_names IS NULL THEN NOT EXISTS (SELECT FROM pg_catalog.pg_type t WHERE t.oid = r.types[i])
      ELSE r.type_names[i] IS NULL END);
  -- Columns of a type whose attributes changed after a staged change was written: read now,
  -- its values would take the new attributes' names, so they too are kept as text, marked, in
  -- the changes written before the change of type (before cutoff).
  changed pg_lsn[] := CASE WHEN r.type_names IS NULL AND EXISTS (SELECT FROM bemi.type_changes)
    THEN ARRAY(SELECT bemi.type_changed_at(r.types[i]) FROM pg_catalog.generate_subscripts(r.columns, 1) AS i ORDER BY i) END;
  altered integer[] := ARRAY(SELECT i FROM pg_catalog.generate_subscripts(changed, 1) AS i
    WHERE changed[i] > (SELECT pg_catalog.min(s.position) FROM bemi.staged s WHERE s.relation = r.relation));
  cutoff pg_lsn := (SELECT pg_catalog.max(changed[i]) FROM pg_catalog.unnest(altered) AS i);
  as_written oid[] := ARRAY(SELECT CASE WHEN i = ANY (altered) THEN 'pg_catalog.text'::pg_catalog.regtype::oid ELSE r.types[i] END
    FROM pg_catalog.generate_subscripts(r.columns, 1) AS i ORDER BY i);
  problem text := CASE WHEN as_text THEN '''''' ELSE pg_catalog.format(
    'nullif(pg_catalog.concat_ws(''; '', %L, CASE WHEN s.position < %L::pg_lsn THEN %L END), '''')',
    'bemi: the type of ' || gone || ' no longer exists: stored as text', cutoff,
    'bemi: the type of ' || (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(r.columns[i]), ', ' ORDER BY i) FROM pg_catalog.unnest(altered) AS i)
      || ' changed its attributes since: stored as text') END;
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
BEGIN
  IF cutoff IS NOT NULL AND NOT as_text THEN
    old_image := pg_catalog.format('CASE WHEN s.position < %L::pg_lsn THEN %s ELSE %s END', cutoff,
      bemi.image_sql(r.columns, as_written, r.typmods, r.type_names, 's.old_values', masked), old_image);
    new_image := pg_catalog.format('CASE WHEN s.position < %L::pg_lsn THEN %s ELSE %s END', cutoff,
      bemi.image_sql(r.columns, as_written, r.typmods, r.type_names, 's.new_values', masked), new_image);
  END IF;
  RETURN pg_catalog.format($q$
    SELECT s.seq, $4::text AS database, r.schema, r."table", CASE s.operation WHEN 'D' THEN %5$s WHEN 'T' THEN NULL ELSE %6$s END AS primary_key,
      CASE s.operation WHEN 'I' THEN 'CREATE' WHEN 'U' THEN 'UPDATE' WHEN 'D' THEN 'DELETE' ELSE 'TRUNCATE' END AS operation,
      coalesce(i.before, '{}') AS before, coalesce(i.after, '{}') AS after,
      coalesce($1 -> s.context, '{}') AS context, s.committed_at, s.transaction_id, s.position, s.ordinal,
      %3$s::text AS problem, s.old_key_only OR s.new_missing IS NOT NULL AS partial,
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

-- Stores every staged change in bemi.changes, in seq order, exactly once (a change already
-- stored keeps its row), empties the stage, and records how far the trail is complete.
-- The one converter of both readers: bemi.ingest() and the streaming worker (docs/ingest.md).
CREATE FUNCTION bemi.store(through pg_lsn, part_of pg_lsn DEFAULT NULL, part_stored bigint DEFAULT 0,
  caught_up_at timestamptz DEFAULT NULL, source_slot name DEFAULT NULL, source_database text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET timezone = 'UTC' SET work_mem = '64MB'
SET array_nulls = on SET xmloption = content SET lc_monetary = 'C' SET lock_timeout = 0
-- The converting INSERT is one plan over every staged relation: JIT once took it from 2 s to 40 s.
SET jit = off
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
  ELSE  -- this database's own trail: not while it is stored in a trail database
    PERFORM bemi.refuse_trail_elsewhere(bemi.slot_name());
  END IF;
  SELECT pg_catalog.string_agg(bemi.convert_sql(x), ' UNION ALL ') INTO queries
  FROM bemi.staged_relations x WHERE x.relation IN (SELECT s.relation FROM bemi.staged s);
  contexts := bemi.staged_contexts();
  -- Partitions for these commit times, and for the next period ahead of them; from the end of
  -- the newest one, so that periods without changes have their (empty) partition too: the
  -- partitions stay contiguous, and restore-archive moves the retained horizon back over them.
  SELECT pg_catalog.min(s.committed_at), pg_catalog.max(s.committed_at) INTO oldest, newest FROM bemi.staged s;
  IF oldest IS NOT NULL THEN
    PERFORM bemi.create_partitions(least(oldest, (SELECT pg_catalog.max(p.to_at) FROM bemi.partitions p)),
      newest + bemi.partition_interval());
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

COMMENT ON FUNCTION bemi.store(pg_lsn, pg_lsn, bigint, timestamptz, name, text) IS
  'Converts the staged changes and stores them in bemi.changes exactly once; records progress up to through.';

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

CREATE FUNCTION bemi.ingest(max_changes integer DEFAULT 10000) RETURNS bigint
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
  -- Not while the trail is stored in a trail database (bemi-pg worker --trail-dsn).
  PERFORM bemi.refuse_trail_elsewhere(slot);
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = slot) AND EXISTS (
    SELECT FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = 'bemi' AND s.database = pg_catalog.current_database()) THEN
    -- After ALTER EXTENSION bemi UPDATE from 1.0: move to the 1.1 slot (before any write here).
    SELECT pg_catalog.max(c.id) INTO newest_id FROM bemi.changes c;
    PERFORM bemi.create_slot();
    SELECT pg_catalog.count(*) INTO moved FROM bemi.changes c WHERE c.id > coalesce(newest_id, 0);
  END IF;
  slot_at := bemi.check_slot(slot);
  -- How far this ingest may claim the trail complete: every commit up to mark.at ends before
  -- mark.lsn; once those are flushed, the peek below reads them. It reads up to mark.lsn (the
  -- end of a WAL record) where that is flushed, else up to what is flushed: reading a record
  -- past the flushed WAL waits until it is flushed, which on an idle server can take seconds
  -- (WAL of a transaction still open, flushed page by page).
  mark := bemi.wal_mark();
  IF mark.at IS NOT NULL THEN
    PERFORM bemi.flushed_past(mark.lsn);
  END IF;
  flushed := least(mark.lsn, pg_catalog.pg_current_wal_flush_lsn());
  -- The slot moves only up to what an earlier, committed ingest stored. Moving it is not
  -- undone by a rollback, so not up to what an ingest earlier in this transaction stored.
  SELECT p.lsn INTO done FROM bemi.progress p WHERE p.slot_name = slot;
  IF done > slot_at AND coalesce(pg_catalog.current_setting('bemi.ingested', true), '') = '' THEN
    PERFORM pg_catalog.pg_replication_slot_advance(slot, done);
  END IF;
  SELECT pg_catalog.max(e.lsn) FILTER (WHERE e.data ->> 'action' = 'C'), pg_catalog.max(e.seq)
  INTO through, read FROM bemi.stage_from_slot(max_changes, flushed) AS e;
  PERFORM pg_catalog.set_config('bemi.ingested', 'on', true);
  -- A peek brings whole transactions, and only those with changes of tracked tables. When it
  -- brought fewer messages than asked for, it read all the WAL up to where it stopped: the
  -- slot may then move that far, past the WAL of other tables, and the trail is complete up
  -- to the mark (its commits end before what was flushed).
  IF coalesce(read, 0) < max_changes THEN
    RETURN moved + bemi.store(greatest(through, flushed, done), NULL, 0, mark.at);
  END IF;
  RETURN moved + bemi.store(greatest(through, done));
END
$$;

COMMENT ON FUNCTION bemi.ingest(integer) IS
  'Moves pending changes from the slot into bemi.changes, exactly once; returns how many.';

-- The pending entries, wal2json format-version 2 shaped, without consuming them: the staged
-- changes converted as bemi.store would, between their B, M and C entries.
CREATE FUNCTION bemi.peek(max_changes integer DEFAULT NULL)
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

-- Every transaction committed at or before this time is in the trail: the last wal_mark whose
-- position the trail was stored past (never the newest stored commit: commits are not stored
-- in the order of their times, and a transaction stored in parts is not all there). Time
-- travel stops here.
-- slot: the source's slot, for a trail kept in a database of its own (bemi-pg worker --trail-dsn).
-- SECURITY DEFINER: time travel asks it for callers that may not read bemi.progress; it tells
-- them only a time.
CREATE FUNCTION bemi.ingested_until(slot name DEFAULT bemi.slot_name()) RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
  SELECT p.caught_up_at FROM bemi.progress p WHERE p.slot_name = ingested_until.slot;
END;

COMMENT ON FUNCTION bemi.ingested_until(name) IS
  'Every transaction committed at or before this time is in bemi.changes (NULL: nothing ingested yet).';

REVOKE ALL ON bemi.staged, bemi.staged_relations FROM PUBLIC;
REVOKE ALL ON FUNCTION bemi.wal_mark(), bemi.flushed_past(pg_lsn), bemi.check_slot(name) FROM PUBLIC;
-- A time and a WAL position are no secret: any worker role may take a mark.
GRANT EXECUTE ON FUNCTION bemi.wal_mark() TO PUBLIC;
REVOKE ALL ON FUNCTION bemi.store(pg_lsn, pg_lsn, bigint, timestamptz, name, text), bemi.describe_relation(oid, oid[], integer[], pg_lsn), bemi.ingest(integer),
  bemi.stage_from_slot(integer, pg_lsn), bemi.peek(integer), bemi.convert_sql(bemi.staged_relations, text, boolean), bemi.staged_contexts(),
  bemi.image_sql(text[], oid[], integer[], text[], text, text[]), bemi.primary_key_sql(text[], text) FROM PUBLIC;
REVOKE ALL ON FUNCTION bemi.ingested_until(name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bemi.ingested_until(name) TO PUBLIC;
CREATE VIEW bemi.wal AS SELECT * FROM bemi.peek();

COMMENT ON VIEW bemi.wal IS
  'Pending WAL entries of tracked tables, wal2json format-version 2 shaped, without consuming them.';

-- The trail (bemi.changes, no grants) is read-only to everyone but the extension's owner.
REVOKE ALL ON bemi.wal FROM PUBLIC;

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

------------------------------------------------------------------------------------------
-- 9. Revert: undo the net effect of changes, conflict-checked, in the caller's transaction.
--    Holds: the helpers (writable_columns, foreign_key_depth, typed_image, known_columns,
--    ignored_columns, masked_columns, text_array, differing_columns, locked_row, revert_sql, revert_table); the
--    plan, in steps over the type bemi.revert_chain (revert_ids, revert_tables, revert_chains
--    and its two ways, revert_row, revert_replay, revert_plan); the writing (revert_context_begin, revert_from,
--    revert_write, revert); what to revert (transaction_changes, context_changes, revert_transaction,
--    revert_context, transactions_changes, revert_transactions, revert_preview; changed_relation).
------------------------------------------------------------------------------------------

-- A revert runs as its caller (no SECURITY DEFINER, no SET search_path: user triggers fire
-- with the caller's settings), so it can write only what the caller may write. SQLSTATEs as in
-- section 8, plus 55000 for rows that changed since (on_conflict => 'error').

-- The columns a revert writes: those of the table now, except generated ones.
CREATE FUNCTION bemi.writable_columns(relation regclass) RETURNS text[]
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_attribute AS a
  WHERE a.attrelid = relation AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '';
END;

-- How far down the foreign keys a table is: the number of other tables it references,
-- directly or not. Parents come before their children.
CREATE FUNCTION bemi.foreign_key_depth(relation regclass) RETURNS integer
LANGUAGE sql STABLE
BEGIN ATOMIC
  WITH RECURSIVE up(parent) AS (
    SELECT relation::oid
    UNION
    SELECT f.confrelid FROM pg_catalog.pg_constraint AS f JOIN up ON f.conrelid = up.parent
    WHERE f.contype = 'f' AND f.confrelid <> f.conrelid
  )
  SELECT pg_catalog.count(*)::integer - 1 FROM up;
END;

-- A row image typed by the table as it is now, back as JSON: values compare the way the
-- table's own rows do (timestamps in this session's time zone, numbers by value).
CREATE FUNCTION bemi.typed_image(relation regclass, image jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  typed jsonb;
BEGIN
  EXECUTE pg_catalog.format('SELECT pg_catalog.to_jsonb(r.*) FROM pg_catalog.jsonb_populate_record(NULL::%s, $1) AS r', relation)
    INTO typed USING bemi.known_values(image); -- "[masked]" is no value of an integer column
  RETURN typed;
END
$$;

-- The columns of an image a revert writes (of those given: the table's columns but generated
-- ones) and compares (except some): those the trail knows a value of, not "[masked]" by a
-- column rule of bemi.track nor "[erased]" by bemi.erase.
CREATE FUNCTION bemi.known_columns(image jsonb, columns text[], except_columns text[] DEFAULT '{}') RETURNS text[]
LANGUAGE sql IMMUTABLE
RETURN (SELECT coalesce(pg_catalog.array_agg(w.name), '{}') FROM pg_catalog.unnest(columns) AS w(name)
        WHERE image OPERATOR(pg_catalog.?) w.name AND w.name OPERATOR(pg_catalog.<>) ALL (except_columns)
          AND (image OPERATOR(pg_catalog.->) w.name) NOT IN ('"[masked]"'::jsonb, '"[erased]"'::jsonb));

-- The columns of a table whose updates alone are not stored (bemi.track's ignore_columns):
-- the trail may hold stale values of them. SECURITY DEFINER: it reads bemi.tracking.
CREATE FUNCTION bemi.ignored_columns(relation regclass) RETURNS text[]
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
  SELECT coalesce((SELECT t.ignore_columns FROM bemi.tracking AS t WHERE t.relation = ignored_columns.relation), '{}');
END;

-- The columns of a table never stored (bemi.track's mask_columns). SECURITY DEFINER: it reads
-- bemi.tracking.
CREATE FUNCTION bemi.masked_columns(relation regclass) RETURNS text[]
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
  SELECT coalesce((SELECT t.mask_columns FROM bemi.tracking AS t WHERE t.relation = masked_columns.relation), '{}');
END;

-- A JSON array of strings as text[] ('{}' for [], NULL for JSON null or SQL NULL).
CREATE FUNCTION bemi.text_array(items jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE
RETURN CASE WHEN items OPERATOR(pg_catalog.<>) 'null' THEN
  (SELECT coalesce(pg_catalog.array_agg(e.item), '{}') FROM pg_catalog.jsonb_array_elements_text(items) AS e(item)) END;

-- The columns in which two typed rows differ, of those given.
CREATE FUNCTION bemi.differing_columns(a jsonb, b jsonb, columns text[]) RETURNS text[]
LANGUAGE sql IMMUTABLE
RETURN (SELECT coalesce(pg_catalog.array_agg(k.name), '{}') FROM pg_catalog.unnest(columns) AS k(name)
        WHERE (a OPERATOR(pg_catalog.->) k.name) IS DISTINCT FROM (b OPERATOR(pg_catalog.->) k.name));

-- The row of a table that an image stands for, locked: the row with its primary key, or for
-- a table without one, a row equal to it that is not one of those taken. NULLs when none.
CREATE FUNCTION bemi.locked_row(relation regclass, key_columns text[], image jsonb, taken tid[],
  OUT image_now jsonb, OUT row_id tid)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF key_columns IS NOT NULL THEN
    EXECUTE pg_catalog.format('SELECT pg_catalog.to_jsonb(t.*), t.ctid FROM %s AS t, pg_catalog.jsonb_populate_record(NULL::%s, $1) AS k WHERE %s FOR UPDATE OF t',
        bemi.scan_of(relation), relation, bemi.key_match(key_columns, 't', 'k'))
      INTO image_now, row_id USING image;
  ELSE
    EXECUTE pg_catalog.format('SELECT pg_catalog.to_jsonb(t.*), t.ctid FROM %s AS t WHERE t.ctid <> ALL ($3) AND pg_catalog.cardinality(bemi.differing_columns(pg_catalog.to_jsonb(t.*), $1, $2)) = 0 LIMIT 1 FOR UPDATE OF t',
        bemi.scan_of(relation))
      INTO image_now, row_id USING bemi.typed_image(relation, image), bemi.known_columns(image, bemi.writable_columns(relation)), taken;
  END IF;
END
$$;

-- The statement of one planned step of a revert: {"kind": insert | update | delete,
-- "relation", "keys", "columns", "match"}. Its parameters: $1 the image to write, $2 the ctid
-- of the row (a table without a key; with one, NULL: any row with the key), $3 an image with
-- the key of the row to write over, $4 NULL or the image the row must match (in the columns
-- "match"). Every name in it is qualified: bemi.revert runs it with its caller's search_path.
CREATE FUNCTION bemi.revert_sql(step jsonb) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  relation regclass := (step ->> 'relation')::oid::regclass;
  keys text[] := bemi.text_array(step -> 'keys');
  columns text[] := bemi.text_array(step -> 'columns');
  -- A row of a table with a key: by its key, and (two rows can share a key for a moment) the
  -- row the plan locked ($2) or the row whose values are $4 (a step of a replay).
  located text := CASE WHEN keys IS NULL THEN 't.ctid = $2::tid'
    ELSE bemi.key_match(keys, 't', 'k') || pg_catalog.format(' AND ($2::pg_catalog.tid IS NULL OR t.ctid = $2::pg_catalog.tid)'
      ' AND ($4::pg_catalog.jsonb IS NULL OR pg_catalog.cardinality(bemi.differing_columns(pg_catalog.to_jsonb(t.*),'
      ' bemi.typed_image(%s, $4), %L::pg_catalog.text[])) = 0)', relation::oid, bemi.text_array(step -> 'match')) END;
BEGIN
  IF step ->> 'kind' = 'insert' THEN
    RETURN pg_catalog.format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM pg_catalog.jsonb_populate_record(NULL::%s, $1) AS r',
        relation,
        (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c), ', ') FROM pg_catalog.unnest(columns) AS c),
        (SELECT pg_catalog.string_agg('r.' || pg_catalog.quote_ident(c), ', ') FROM pg_catalog.unnest(columns) AS c),
        relation);
  ELSIF step ->> 'kind' = 'update' THEN
    RETURN pg_catalog.format('UPDATE %s AS t SET (%s) = (SELECT %s FROM pg_catalog.jsonb_populate_record(NULL::%s, $1) AS r)%s WHERE %s',
        bemi.scan_of(relation),
        (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c), ', ') FROM pg_catalog.unnest(columns) AS c),
        (SELECT pg_catalog.string_agg('r.' || pg_catalog.quote_ident(c), ', ') FROM pg_catalog.unnest(columns) AS c),
        relation,
        CASE WHEN keys IS NULL THEN '' ELSE pg_catalog.format(' FROM pg_catalog.jsonb_populate_record(NULL::%s, $3) AS k', relation) END,
        located);
  ELSE
    RETURN pg_catalog.format('DELETE FROM %s AS t%s WHERE %s', bemi.scan_of(relation),
        CASE WHEN keys IS NULL THEN '' ELSE pg_catalog.format(' USING pg_catalog.jsonb_populate_record(NULL::%s, $3) AS k', relation) END,
        located);
  END IF;
END
$$;

-- The table a change was made in, by identity: of the tables tracked under that name (when
-- tracking began, or now), the one whose tracking began last at or before the change, so a
-- renamed table is followed and a table created later under the same name is never taken for
-- it; NULL when that table was dropped. Without such a record (tracked again since), the
-- table of that name now. SECURITY DEFINER: it reads bemi.tracking, and tells only an OID.
CREATE FUNCTION bemi.changed_relation(schema_name text, table_name text, committed_at timestamptz) RETURNS oid
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  named oid := pg_catalog.to_regclass(pg_catalog.format('%I.%I', schema_name, table_name));
  tracked record;
BEGIN
  SELECT t.relation::oid AS relation, c.oid IS NOT NULL AS alive INTO tracked
  FROM bemi.tracking AS t LEFT JOIN pg_catalog.pg_class AS c ON c.oid = t.relation
  WHERE ((t.schema, t."table") = (schema_name, table_name) OR t.relation::oid = named)
    AND t.tracked_at <= changed_relation.committed_at
  ORDER BY t.tracked_at DESC LIMIT 1;
  IF NOT FOUND THEN
    RETURN named;
  ELSIF NOT tracked.alive THEN
    RETURN NULL;
  END IF;
  RETURN tracked.relation;
END
$$;

-- What a revert needs to know of the table a change was made in (bemi.changed_relation):
-- relation, keys, writable and ignored columns, foreign key depth, name in the trail.
CREATE FUNCTION bemi.revert_table(schema_name text, table_name text, change_id bigint, committed_at timestamptz) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  relation regclass := bemi.changed_relation(schema_name, table_name, committed_at);
BEGIN
  IF relation IS NULL THEN
    RAISE EXCEPTION 'bemi: change % is of the table %.%, which does not exist any more', change_id, schema_name, table_name
      USING ERRCODE = 'invalid_parameter_value',
            HINT = CASE WHEN pg_catalog.to_regclass(pg_catalog.format('%I.%I', schema_name, table_name)) IS NOT NULL
              THEN 'The table of that name now is another one, created after the change: a revert never writes into it.' END;
  END IF;
  RETURN pg_catalog.jsonb_build_object('relation', relation::oid, 'keys', bemi.key_columns(relation),
    'writable', bemi.writable_columns(relation), 'ignored', bemi.ignored_columns(relation),
    'depth', bemi.foreign_key_depth(relation), 'schema', schema_name, 'table', table_name);
END
$$;

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
    SELECT f.schema, f."table", f.id, f.committed_at
    FROM (SELECT DISTINCT ON (x.schema, x."table") x.schema, x."table", x.id, x.committed_at
          FROM %s AS x WHERE x.id = ANY ($1) ORDER BY x.schema, x."table", x.committed_at, x.id) AS f
    ORDER BY f.committed_at, f.id$q$, changes) USING ids
  LOOP
    tables := tables || pg_catalog.jsonb_build_object(t.schema || '.' || t."table",
      bemi.revert_table(t.schema, t."table", t.id, t.committed_at));
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
  -- Rows are told apart by their key under the table's key now (a key redefined since left
  -- the trail's primary_key of older changes under the old one).
  RETURN QUERY EXECUTE pg_catalog.format($q$
    WITH x AS (
      SELECT x.id, x.schema, x."table", x.operation, x.before, x.after, x.committed_at,
        coalesce(bemi.image_key(CASE WHEN x.after <> '{}' THEN x.after ELSE x.before END,
                                bemi.text_array($2 -> (x.schema || '.' || x."table") -> 'keys')), x.primary_key) AS primary_key
      FROM %1$s AS x WHERE x.id = ANY ($1)
    )
    SELECT ($2 -> (f.schema || '.' || f."table") ->> 'relation')::pg_catalog.oid, f.schema || '.' || f."table",
      f.primary_key, f.first, CASE WHEN l.operation = 'DELETE' THEN NULL ELSE l.after END, l.operation = 'DELETE',
      f.ids, f.first_id, l.id
    FROM (SELECT DISTINCT ON (x.schema, x."table", x.primary_key) x.schema, x."table", x.primary_key, x.id AS first_id,
            x.committed_at, CASE WHEN x.operation = 'CREATE' THEN NULL ELSE x.before END AS first,
            pg_catalog.string_agg(x.id::text, ',') OVER (PARTITION BY x.schema, x."table", x.primary_key
              ORDER BY x.committed_at, x.id ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS ids
          FROM x
          ORDER BY x.schema, x."table", x.primary_key, x.committed_at, x.id) AS f
    JOIN (SELECT DISTINCT ON (x.schema, x."table", x.primary_key) x.schema, x."table", x.primary_key, x.id, x.operation, x.after
          FROM x
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
  ignored text[];
BEGIN
  FOR c IN EXECUTE pg_catalog.format('SELECT x.id, x.schema, x."table", x.primary_key, x.operation, x.before, x.after '
                                     'FROM %s AS x WHERE x.id = ANY ($1) ORDER BY x.committed_at, x.id', changes) USING ids LOOP
    relation := (tables -> (c.schema || '.' || c."table") ->> 'relation')::oid;
    keys := bemi.text_array(tables -> (c.schema || '.' || c."table") -> 'keys');
    ignored := bemi.text_array(tables -> (c.schema || '.' || c."table") -> 'ignored');
    old_key := relation || ' ' || coalesce(bemi.image_key(c.before, keys), c.before::text);
    new_key := relation || ' ' || coalesce(bemi.image_key(c.after, keys), c.after::text);
    found_key := CASE WHEN c.operation = 'CREATE' THEN new_key ELSE old_key END;
    n := NULL;
    -- Two rows can have one key for a moment (a swap under a DEFERRABLE key): an UPDATE or DELETE
    -- continues the chain whose row it found (its before is that row's last image, but for
    -- ignored columns, whose updates alone are not stored).
    FOREACH candidate IN ARRAY coalesce(bemi.text_array(open_chains -> found_key)::integer[], '{}') LOOP
      IF (chains[candidate]).gone = (c.operation = 'CREATE') AND (c.operation = 'CREATE' OR keys IS NULL
          OR (chains[candidate]).last - ignored = c.before - ignored) THEN
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
CREATE FUNCTION bemi.revert_row(chain bemi.revert_chain, info jsonb, on_conflict text, taken tid[], moving tid[],
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
    -- The key it goes back to is another row's, unless the revert moves that row away.
    WHEN found_target IS NOT NULL AND target_id IS DISTINCT FROM expected_id AND target_id <> ALL (moving) THEN 'conflict'
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
    'last_id', chain.last_id, 'depth', info -> 'depth', 'ids', chain.ids);
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
    -- Ignored columns are left as they are: their later values were never stored.
    step := step || pg_catalog.jsonb_build_object('kind', 'update', 'phase', 2, 'columns',
      bemi.differing_columns(found_expected, typed_target, bemi.known_columns(target, writable, ignored)));
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

-- A row's changes undone one by one, newest first, as steps like revert_row's (with their
-- statements): for a revert whose net writes cannot be put in an order the constraints
-- accept (keys swapped under a key that is not DEFERRABLE, cycles of foreign keys), written
-- by revert_from in reverse commit order, each the inverse of a write the table once took.
-- Empty for a table without a key (its rows are found by value, not by key).
CREATE FUNCTION bemi.revert_replay(changes regclass, ids text, info jsonb) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  writable text[] := bemi.text_array(info -> 'writable');
  ignored text[] := bemi.text_array(info -> 'ignored');
  undone jsonb;
BEGIN
  IF info -> 'keys' = 'null' THEN
    RETURN '[]';
  END IF;
  EXECUTE pg_catalog.format($q$
    SELECT coalesce(pg_catalog.jsonb_agg(s || pg_catalog.jsonb_build_object('sql', bemi.revert_sql(s))), '[]') FROM (
      SELECT pg_catalog.jsonb_build_object('relation', $2 -> 'relation', 'keys', $2 -> 'keys', 'id', x.id,
          'committed_at', x.committed_at, 'last_id', x.id, 'target', x.before, 'at', x.after, 'image', x.after,
          'match', bemi.known_columns(x.after, $3, $4))
        || CASE x.operation
          WHEN 'CREATE' THEN '{"kind": "delete"}'
          WHEN 'DELETE' THEN pg_catalog.jsonb_build_object('kind', 'insert', 'columns', bemi.known_columns(x.before, $3))
          ELSE pg_catalog.jsonb_build_object('kind', 'update', 'columns', bemi.known_columns(x.before, $3, $4)) END AS s
      FROM %s AS x WHERE x.id = ANY (pg_catalog.string_to_array($1, ',')::bigint[])) AS u$q$, changes)
    INTO undone USING ids, info, writable, ignored;
  RETURN undone;
END
$$;

-- What a revert does, checked and the rows locked, without writing: the steps to write (in
-- order, each with its statement) and the result rows. Raises the errors bemi.revert raises.
-- The changes are read from changes: bemi.changes, or a copy of the trail's rows.
CREATE FUNCTION bemi.revert_plan(changes regclass, change_ids bigint[], on_conflict text,
                                 OUT ids bigint[], OUT steps jsonb, OUT results jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  by_change boolean;
  tables jsonb;
  chains bemi.revert_chain[];
  chain bemi.revert_chain;
  keys text[];
  moving tid[] := '{}';   -- rows a step takes off their keys
  checked record;
  taken tid[] := '{}';    -- rows of tables without a key that a step has claimed
  conflicts text[] := '{}';
  planned jsonb[] := '{}';
  result_rows jsonb[] := '{}';
BEGIN
  SELECT r.ids, r.by_change INTO ids, by_change FROM bemi.revert_ids(changes, change_ids, on_conflict) AS r;
  tables := bemi.revert_tables(changes, ids);
  -- Each row's changes, chained: its net effect is its first before and its last after.
  chains := ARRAY(SELECT c FROM bemi.revert_chains(changes, ids, tables, by_change) AS c);
  -- The rows the revert takes off their keys (moved back, or deleted): their keys are free for
  -- other rows of the revert (a swap of keys is no conflict).
  FOREACH chain IN ARRAY chains LOOP
    keys := bemi.text_array(tables -> chain.table_name -> 'keys');
    IF keys IS NOT NULL AND chain.last IS NOT NULL
       AND (chain.first IS NULL OR bemi.image_key(chain.first, keys) IS DISTINCT FROM bemi.image_key(chain.last, keys)) THEN
      moving := moving || ARRAY(SELECT l.row_id FROM bemi.locked_row(chain.relation, keys, chain.last, '{}') AS l
                                WHERE l.row_id IS NOT NULL);
    END IF;
  END LOOP;
  FOREACH chain IN ARRAY chains LOOP
    checked := bemi.revert_row(chain, tables -> chain.table_name, on_conflict, taken, moving);
    IF checked.claimed IS NOT NULL THEN
      taken[pg_catalog.cardinality(taken) + 1] := checked.claimed;
    END IF;
    IF checked.conflict IS NOT NULL THEN
      conflicts[pg_catalog.cardinality(conflicts) + 1] := checked.conflict;
    END IF;
    IF checked.step IS NOT NULL THEN
      planned[pg_catalog.cardinality(planned) + 1] := checked.step
        || pg_catalog.jsonb_build_object('replay', bemi.revert_replay(changes, checked.step ->> 'ids', tables -> chain.table_name));
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

-- Sets the context of a revert's writes: the caller's plus the reverted ids (over any size
-- limit: the ids are the point). Returns the caller's context, to be set again after.
CREATE FUNCTION bemi.revert_context_begin(ids bigint[]) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  caller_context jsonb := bemi.context();
  context_limit text := pg_catalog.current_setting('bemi.max_context_bytes', true);
  revert_context jsonb := coalesce(caller_context, '{}') || pg_catalog.jsonb_build_object('bemi_revert',
    pg_catalog.jsonb_build_object('change_ids', pg_catalog.to_jsonb(ids)));
BEGIN
  PERFORM pg_catalog.set_config('bemi.max_context_bytes',
    GREATEST(coalesce(nullif(context_limit, '')::bigint, 65536), pg_catalog.octet_length(revert_context::text))::text, true);
  PERFORM bemi.set_context(revert_context);
  PERFORM pg_catalog.set_config('bemi.max_context_bytes', coalesce(context_limit, ''), true);
  RETURN caller_context;
END
$$;

-- Writes one step (revert_sql's statement): on the row the plan locked, or for a step of a
-- replay the row with its key and values; where that row is not found (an earlier step's
-- cascade rewrote it), the one row with its key. Runs as its caller, like revert_from.
CREATE FUNCTION bemi.revert_write(step jsonb) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
  written pg_catalog.int8;
  relation pg_catalog.regclass := (step OPERATOR(pg_catalog.->>) 'relation')::pg_catalog.oid::pg_catalog.regclass;
  keys pg_catalog.text[] := bemi.text_array(step OPERATOR(pg_catalog.->) 'keys');
BEGIN
  -- Values the trail does not know ("[masked]", "[erased]") are never written, nor read as
  -- values of their columns' types.
  EXECUTE step OPERATOR(pg_catalog.->>) 'sql'
    USING bemi.known_values(step OPERATOR(pg_catalog.->) 'target'), step OPERATOR(pg_catalog.->>) 'row_id',
      bemi.known_values(step OPERATOR(pg_catalog.->) 'at'), step OPERATOR(pg_catalog.->) 'image';
  GET DIAGNOSTICS written = ROW_COUNT;
  IF written OPERATOR(pg_catalog.=) 0 AND keys IS NOT NULL AND step OPERATOR(pg_catalog.->>) 'kind' OPERATOR(pg_catalog.<>) 'insert' THEN
    EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM %s AS t, pg_catalog.jsonb_populate_record(NULL::%s, $1) AS k WHERE %s',
        bemi.scan_of(relation), relation, bemi.key_match(keys, 't', 'k'))
      INTO written USING bemi.known_values(step OPERATOR(pg_catalog.->) 'at');
    IF written OPERATOR(pg_catalog.<>) 1 THEN
      RAISE EXCEPTION 'bemi: cannot revert change %: its row is not as the revert found it', step OPERATOR(pg_catalog.->>) 'last_id'
        USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Run the revert again: it checks the rows as they are now.';
    END IF;
    EXECUTE step OPERATOR(pg_catalog.->>) 'sql'
      USING bemi.known_values(step OPERATOR(pg_catalog.->) 'target'), NULL::pg_catalog.text,
        bemi.known_values(step OPERATOR(pg_catalog.->) 'at'), NULL::pg_catalog.jsonb;
  END IF;
END
$$;

-- Writes as its caller, with the caller's search_path (so the caller's triggers and row
-- security run as they always do); everything it runs is schema-qualified. Where the tables
-- are: the changes are read from changes (bemi.changes, or a copy of the trail's rows).
CREATE FUNCTION bemi.revert_from(changes regclass, change_ids bigint[], on_conflict text)
RETURNS TABLE (change_id bigint, schema text, "table" text, primary_key text, action text)
LANGUAGE plpgsql
AS $$
DECLARE
  plan record;
  caller_context jsonb;
  step jsonb;
  pending jsonb;
  failed jsonb;
  progress boolean;
  error_state text;
  error_message text;
  error_detail text;
BEGIN
  BEGIN
    SELECT * INTO plan FROM bemi.revert_plan(changes, change_ids, on_conflict);
  EXCEPTION WHEN data_exception THEN -- a value of the trail the table cannot take (retyped since)
    GET STACKED DIAGNOSTICS error_message = MESSAGE_TEXT;
    PERFORM bemi.unfit_value(error_message, NULL);
    RAISE;
  END;
  -- The writes carry the caller's context plus the reverted ids, so a revert can be reverted.
  caller_context := bemi.revert_context_begin(plan.ids);
  -- In order (parents inserted before children, children deleted before parents); rows of one
  -- table that reference each other, and orders no table-level rule gets right, are retried
  -- one by one until every step is written or a round writes nothing.
  pending := plan.steps;
  BEGIN
    FOR step IN SELECT s.value FROM pg_catalog.jsonb_array_elements(plan.steps) AS s LOOP
      PERFORM bemi.revert_write(step);
    END LOOP;
    pending := '[]';
  EXCEPTION WHEN foreign_key_violation OR unique_violation THEN
    NULL; -- undone: written one by one below
  END;
  BEGIN
    WHILE pg_catalog.jsonb_array_length(pending) OPERATOR(pg_catalog.>) 0 LOOP
      failed := '[]';
      progress := false;
      FOR step IN SELECT s.value FROM pg_catalog.jsonb_array_elements(pending) AS s LOOP
        BEGIN
          PERFORM bemi.revert_write(step);
          progress := true;
        EXCEPTION WHEN foreign_key_violation OR unique_violation THEN
          failed := failed OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_array(step);
          GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT, error_detail = PG_EXCEPTION_DETAIL;
        END;
      END LOOP;
      IF NOT progress THEN
        RAISE EXCEPTION 'bemi: cannot revert change %: %', failed OPERATOR(pg_catalog.->) 0 OPERATOR(pg_catalog.->>) 'last_id', error_message
          USING ERRCODE = error_state, DETAIL = coalesce(error_detail, '');
      END IF;
      pending := failed;
    END LOOP;
  EXCEPTION WHEN foreign_key_violation OR unique_violation THEN
    -- No order of the net writes is accepted (the writes above are undone): the changes undone
    -- one by one, newest first, with DEFERRABLE constraints checked once at the end.
    GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT, error_detail = PG_EXCEPTION_DETAIL;
    BEGIN
      SET CONSTRAINTS ALL DEFERRED;
      FOR step IN SELECT u.value FROM pg_catalog.jsonb_array_elements(plan.steps) AS s,
                    pg_catalog.jsonb_array_elements(s.value OPERATOR(pg_catalog.->) 'replay') AS u
                  ORDER BY (u.value OPERATOR(pg_catalog.->>) 'committed_at')::pg_catalog.timestamptz DESC,
                    (u.value OPERATOR(pg_catalog.->>) 'id')::pg_catalog.int8 DESC LOOP
        PERFORM bemi.revert_write(step);
      END LOOP;
      SET CONSTRAINTS ALL IMMEDIATE;
    EXCEPTION WHEN foreign_key_violation OR unique_violation THEN
      RAISE EXCEPTION '%', error_message USING ERRCODE = error_state, DETAIL = coalesce(error_detail, '');
    END;
  END;
  PERFORM bemi.set_context(caller_context);
  RETURN QUERY SELECT (r.value OPERATOR(pg_catalog.->>) 0)::pg_catalog.int8, r.value OPERATOR(pg_catalog.->>) 1,
      r.value OPERATOR(pg_catalog.->>) 2, r.value OPERATOR(pg_catalog.->>) 3, r.value OPERATOR(pg_catalog.->>) 4
    FROM pg_catalog.jsonb_array_elements(plan.results) AS r;
END
$$;

CREATE FUNCTION bemi.revert(change_ids bigint[], on_conflict text DEFAULT 'error')
RETURNS TABLE (change_id bigint, schema text, "table" text, primary_key text, action text)
LANGUAGE sql
BEGIN ATOMIC
  SELECT r.change_id, r.schema, r."table", r.primary_key, r.action FROM bemi.revert_from('bemi.changes', revert.change_ids, revert.on_conflict) AS r;
END;

COMMENT ON FUNCTION bemi.revert(bigint[], text) IS
  'Undoes the net effect of changes on each row, in the caller''s transaction; on_conflict: error, skip or overwrite.';

-- Where the trail is, the changes to revert: those of one transaction (bemi.changes.transaction_id),
-- or those whose context contains a context. database_name: only changes from this database
-- (NULL: any), for a trail database that holds the trails of several.
CREATE FUNCTION bemi.transaction_changes(transaction_id bigint, database_name text DEFAULT NULL) RETURNS bigint[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  ids bigint[];
  commits integer;
BEGIN
  SELECT pg_catalog.array_agg(x.id), pg_catalog.count(DISTINCT x.committed_at) INTO ids, commits
  FROM bemi.changes AS x WHERE x.transaction_id = transaction_changes.transaction_id
    AND (database_name IS NULL OR x.database = database_name);
  IF ids IS NULL THEN
    RAISE EXCEPTION 'bemi: no changes of transaction % in the trail', coalesce(transaction_id::text, 'NULL')
      USING ERRCODE = 'invalid_parameter_value';
  ELSIF commits > 1 THEN
    RAISE EXCEPTION 'bemi: transaction id % names % transactions in the trail (transaction ids wrap around)', transaction_id, commits
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Revert by change ids with bemi.revert(ARRAY[...]).';
  END IF;
  RETURN ids;
END
$$;

-- since: committed at or after (NULL: ever). The empty context matches every change: refused
-- unless match_all.
CREATE FUNCTION bemi.context_changes(context jsonb, since timestamptz, database_name text DEFAULT NULL, match_all boolean DEFAULT false)
RETURNS bigint[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  ids bigint[];
BEGIN
  IF pg_catalog.jsonb_typeof(context_changes.context) IS DISTINCT FROM 'object' THEN
    RAISE EXCEPTION 'bemi: the context to revert must be a JSON object, not %', coalesce(pg_catalog.jsonb_typeof(context_changes.context), 'NULL')
      USING ERRCODE = 'invalid_parameter_value';
  ELSIF context_changes.context = '{}' AND match_all IS NOT TRUE THEN
    RAISE EXCEPTION 'bemi: the empty context matches every change in the trail%', CASE WHEN since IS NULL THEN '' ELSE ' since ' || since END
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Name the context to revert, e.g. ''{"request_id": "..."}''; to revert every change, pass match_all => true.';
  END IF;
  SELECT pg_catalog.array_agg(x.id) INTO ids FROM bemi.changes AS x
  WHERE x.context @> context_changes.context AND (since IS NULL OR x.committed_at >= since)
    AND (database_name IS NULL OR x.database = database_name);
  IF ids IS NULL THEN
    RAISE EXCEPTION 'bemi: no changes with context % in the trail%', context_changes.context,
        CASE WHEN since IS NULL THEN '' ELSE ' since ' || since END
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  RETURN ids;
END
$$;

CREATE FUNCTION bemi.revert_transaction(transaction_id bigint, on_conflict text DEFAULT 'error')
RETURNS TABLE (change_id bigint, schema text, "table" text, primary_key text, action text)
LANGUAGE sql
BEGIN ATOMIC
  SELECT r.change_id, r.schema, r."table", r.primary_key, r.action
  FROM bemi.revert(bemi.transaction_changes(revert_transaction.transaction_id), revert_transaction.on_conflict) AS r;
END;

COMMENT ON FUNCTION bemi.revert_transaction(bigint, text) IS 'bemi.revert of every change of one transaction.';

CREATE FUNCTION bemi.revert_context(context jsonb, since timestamptz DEFAULT NULL, on_conflict text DEFAULT 'error',
                                    match_all boolean DEFAULT false)
RETURNS TABLE (change_id bigint, schema text, "table" text, primary_key text, action text)
LANGUAGE sql
BEGIN ATOMIC
  SELECT r.change_id, r.schema, r."table", r.primary_key, r.action
  FROM bemi.revert(bemi.context_changes(revert_context.context, revert_context.since, NULL, revert_context.match_all),
                   revert_context.on_conflict) AS r;
END;

COMMENT ON FUNCTION bemi.revert_context(jsonb, timestamptz, text, boolean) IS
  'bemi.revert of every change whose context contains the given one, committed at or after since (the empty context only with match_all => true).';

-- Where the trail is: the changes of a range of transactions, in commit order from the first
-- change of one through the last change of another (and every transaction committed between).
CREATE FUNCTION bemi.transactions_changes(first_transaction bigint, last_transaction bigint, database_name text DEFAULT NULL)
RETURNS bigint[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  first_change bigint := (SELECT pg_catalog.min(i) FROM pg_catalog.unnest(bemi.transaction_changes(first_transaction, database_name)) AS i);
  last_change bigint := (SELECT pg_catalog.max(i) FROM pg_catalog.unnest(bemi.transaction_changes(last_transaction, database_name)) AS i);
  bounds record;
BEGIN
  SELECT (SELECT x.committed_at FROM bemi.changes AS x WHERE x.id = first_change) AS low,
         (SELECT x.committed_at FROM bemi.changes AS x WHERE x.id = last_change) AS high INTO bounds;
  IF (bounds.low, first_change) > (bounds.high, last_change) THEN
    RAISE EXCEPTION 'bemi: transaction % committed after transaction %', first_transaction, last_transaction
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Give the earlier transaction first.';
  END IF;
  RETURN (SELECT pg_catalog.array_agg(x.id ORDER BY x.committed_at, x.id) FROM bemi.changes AS x
          WHERE x.committed_at BETWEEN bounds.low AND bounds.high
            AND (x.committed_at, x.id) >= (bounds.low, first_change) AND (x.committed_at, x.id) <= (bounds.high, last_change)
            AND (database_name IS NULL OR x.database = database_name));
END
$$;

CREATE FUNCTION bemi.revert_transactions(first_transaction bigint, last_transaction bigint, on_conflict text DEFAULT 'error')
RETURNS TABLE (change_id bigint, schema text, "table" text, primary_key text, action text)
LANGUAGE sql
BEGIN ATOMIC
  SELECT r.change_id, r.schema, r."table", r.primary_key, r.action
  FROM bemi.revert(bemi.transactions_changes(revert_transactions.first_transaction, revert_transactions.last_transaction),
                   revert_transactions.on_conflict) AS r;
END;

COMMENT ON FUNCTION bemi.revert_transactions(bigint, bigint, text) IS
  'bemi.revert of every change of the transactions committed from one through another, in one call.';

-- What bemi.revert would do, without writing: per row, the action and the values the row
-- would get (the columns written: all it would insert, those it would update; NULL for a
-- delete or no write). Rows are locked as by a revert, until the caller's transaction ends.
CREATE FUNCTION bemi.revert_preview(change_ids bigint[], on_conflict text DEFAULT 'error')
RETURNS TABLE (change_id bigint, schema text, "table" text, primary_key text, action text, new_values jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  plan record;
  failure text;
BEGIN
  SELECT * INTO plan FROM bemi.revert_plan('bemi.changes', change_ids, on_conflict);
  RETURN QUERY SELECT (r.value ->> 0)::bigint, r.value ->> 1, r.value ->> 2, r.value ->> 3, r.value ->> 4,
      (SELECT pg_catalog.jsonb_object_agg(c.name, s.value -> 'target' -> c.name)
       FROM pg_catalog.jsonb_array_elements(plan.steps) AS s, pg_catalog.jsonb_array_elements_text(s.value -> 'columns') AS c(name)
       WHERE (s.value -> 'last_id') = (r.value -> 0))
    FROM pg_catalog.jsonb_array_elements(plan.results) AS r;
EXCEPTION WHEN data_exception THEN
  GET STACKED DIAGNOSTICS failure = MESSAGE_TEXT;
  PERFORM bemi.unfit_value(failure, NULL);
  RAISE;
END
$$;

COMMENT ON FUNCTION bemi.revert_preview(bigint[], text) IS
  'What bemi.revert of these changes would do to each row, and the values it would write, without writing.';

REVOKE ALL ON FUNCTION bemi.ignored_columns(regclass), bemi.masked_columns(regclass), bemi.changed_relation(text, text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bemi.ignored_columns(regclass), bemi.masked_columns(regclass), bemi.changed_relation(text, text, timestamptz) TO PUBLIC;

------------------------------------------------------------------------------------------
-- 10. Retention and erasure: old history goes as whole partitions, and one row's personal
--     data can be erased from every stored change.
--    Holds: bemi.retention, bemi.retained_from(), bemi.retainable(), bemi.retain(),
--    bemi.erasures, bemi.erase().
------------------------------------------------------------------------------------------

-- Commit times before this are no longer in the trail (bemi.retain dropped them).
CREATE TABLE bemi.retention (
  single boolean PRIMARY KEY DEFAULT true CHECK (single),
  retained_from timestamptz NOT NULL
);

COMMENT ON TABLE bemi.retention IS 'The retained horizon: the trail holds no change committed before retained_from.';
SELECT pg_catalog.pg_extension_config_dump('bemi.retention', '');

-- SECURITY DEFINER: time travel asks it for callers that may not read bemi.retention; it tells
-- them only a time.
CREATE FUNCTION bemi.retained_from() RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
  SELECT r.retained_from FROM bemi.retention r;
END;

COMMENT ON FUNCTION bemi.retained_from() IS 'The trail holds no change committed before this time (NULL: nothing was pruned).';
REVOKE ALL ON FUNCTION bemi.retained_from() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bemi.retained_from() TO PUBLIC;

-- The partitions bemi.retain(keep) drops: all their changes are older than keep, and ingest
-- has gone past their end, so no change not yet ingested can still belong in them.
CREATE FUNCTION bemi.retainable(keep interval)
RETURNS TABLE (partition regclass, from_at timestamptz, to_at timestamptz)
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT p.partition, p.from_at, p.to_at FROM bemi.partitions p
  WHERE p.to_at <= LEAST(pg_catalog.now() - keep, bemi.ingested_until()) ORDER BY p.from_at;
END;

COMMENT ON FUNCTION bemi.retainable(interval) IS
  'The partitions bemi.retain(keep) would drop now: older than keep, and ingested past their end.';

-- Drops the partitions whose changes are all older than keep (and ingested past their end):
-- detached, then dropped, never a DELETE. Returns them.
CREATE FUNCTION bemi.retain(keep interval)
RETURNS TABLE (partition text, from_at timestamptz, to_at timestamptz)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  old record;
BEGIN
  IF keep IS NULL OR keep < interval '0' THEN
    RAISE EXCEPTION 'bemi: keep must be a positive interval, not %', coalesce(keep::text, 'NULL')
      USING ERRCODE = 'invalid_parameter_value', HINT = 'For example SELECT * FROM bemi.retain(''90 days'');';
  END IF;
  FOR old IN SELECT p.partition, p.from_at, p.to_at FROM bemi.retainable(keep) p LOOP
    partition := old.partition::text; from_at := old.from_at; to_at := old.to_at;  -- named while it exists
    -- Partitions made by the install script belong to the extension; the rest do not.
    IF EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
               AND d.objid = old.partition AND d.deptype = 'e') THEN
      EXECUTE pg_catalog.format('ALTER EXTENSION bemi DROP TABLE %s', old.partition);
    END IF;
    EXECUTE pg_catalog.format('ALTER TABLE bemi.changes DETACH PARTITION %s', old.partition);
    EXECUTE pg_catalog.format('DROP TABLE %s', old.partition);
    INSERT INTO bemi.retention AS r (retained_from) VALUES (old.to_at)
    ON CONFLICT (single) DO UPDATE SET retained_from = greatest(r.retained_from, excluded.retained_from);
    RETURN NEXT;
  END LOOP;
END
$$;

COMMENT ON FUNCTION bemi.retain(interval) IS
  'Drops whole partitions of the trail whose changes are all older than keep; returns them.';

-- Who erased which row's columns, and when; never the values.
CREATE TABLE bemi.erasures (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  schema text NOT NULL,
  "table" text NOT NULL,
  primary_key text NOT NULL,
  columns text[] NOT NULL,
  erased_by name NOT NULL DEFAULT current_user,
  erased_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  changes bigint NOT NULL
);

COMMENT ON TABLE bemi.erasures IS 'Erasure requests carried out by bemi.erase: who, when, which row and columns.';
SELECT pg_catalog.pg_extension_config_dump('bemi.erasures', '');
SELECT pg_catalog.pg_extension_config_dump('bemi.erasures_id_seq', '');

-- For a data subject's erasure request: the given columns (every column but the key by
-- default) become "[erased]" in every stored change of the row, and the request is recorded.
-- Returns how many changes it rewrote. Changes not yet ingested are not touched: run it when
-- the worker has caught up.
CREATE FUNCTION bemi.erase(relation regclass, primary_key text, columns text[] DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  schema_name text;
  table_name text;
  erased bigint;
BEGIN
  SELECT n.nspname, c.relname INTO schema_name, table_name
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = relation;
  columns := coalesce(columns, ARRAY(
    SELECT a.attname::text FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = relation AND a.attnum > 0 AND NOT a.attisdropped
      AND a.attname <> ALL (coalesce(bemi.key_columns(relation), '{}')) ORDER BY a.attnum));
  IF primary_key IS NULL OR columns && bemi.key_columns(relation) THEN
    RAISE EXCEPTION 'bemi: erase needs a primary key and columns that are not part of it'
      USING ERRCODE = 'invalid_parameter_value', HINT = 'SELECT bemi.erase(''people'', ''42'');';
  END IF;
  UPDATE bemi.changes c SET
    before = (SELECT coalesce(pg_catalog.jsonb_object_agg(e.key, CASE WHEN e.key = ANY (columns) THEN '"[erased]"' ELSE e.value END), '{}')
              FROM pg_catalog.jsonb_each(c.before) AS e),
    after = (SELECT coalesce(pg_catalog.jsonb_object_agg(e.key, CASE WHEN e.key = ANY (columns) THEN '"[erased]"' ELSE e.value END), '{}')
             FROM pg_catalog.jsonb_each(c.after) AS e)
  WHERE c.schema = schema_name AND c."table" = table_name
    AND (c.primary_key = erase.primary_key OR c.previous_key = erase.primary_key);
  GET DIAGNOSTICS erased = ROW_COUNT;
  INSERT INTO bemi.erasures (schema, "table", primary_key, columns, changes)
  VALUES (schema_name, table_name, erase.primary_key, columns, erased);
  RETURN erased;
END
$$;

COMMENT ON FUNCTION bemi.erase(regclass, text, text[]) IS
  'Erases columns (all but the key by default) of one row from every stored change, and records that it did.';

REVOKE ALL ON bemi.retention, bemi.erasures FROM PUBLIC;
REVOKE ALL ON FUNCTION bemi.retain(interval), bemi.retainable(interval), bemi.erase(regclass, text, text[]) FROM PUBLIC;

------------------------------------------------------------------------------------------
-- 11. Uninstall: what bemi-pg uninstall runs before the extension or plain install goes.
--    Holds: bemi.uninstall().
------------------------------------------------------------------------------------------

-- Undoes what bemi did outside its own objects, so that DROP EXTENSION bemi; DROP SCHEMA bemi;
-- (for a plain install, DROP SCHEMA bemi CASCADE) leaves nothing behind: no automatic tracking,
-- every tracked table untracked (trigger off, out of the publication, its replica identity as
-- it was before track), the publication and this database's slots dropped.
-- The trail is kept unless drop_trail: bemi.changes moves to schema bemi_trail, outside the
-- extension, so dropping the extension cannot delete it. Returns where the trail is.
CREATE FUNCTION bemi.uninstall(drop_trail boolean DEFAULT false) RETURNS text
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

COMMENT ON FUNCTION bemi.uninstall(boolean) IS
  'Prepares removing bemi: untracks every table, drops the slot (and a plain install''s publication), keeps the trail in bemi_trail.changes unless drop_trail.';

REVOKE ALL ON FUNCTION bemi.uninstall(boolean) FROM PUBLIC;
