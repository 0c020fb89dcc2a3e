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
