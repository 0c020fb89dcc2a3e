------------------------------------------------------------------------------------------
-- 2. The context trigger: before each statement on a tracked table, put the context into
--    the WAL, once, and only when it differs from the last one this transaction emitted.
--    Holds: bemi.comment_context(text, text), bemi.context_trigger().
------------------------------------------------------------------------------------------

-- The context of a statement's trailing /*Bemi {...} Bemi*/ comment, read before each write
-- statement that has one (the Django and SQLAlchemy integrations put one on every write).
-- emitted is what this transaction last emitted ('' for nothing or no context): a comment
-- written exactly like it, the usual case for the second and later writes of a transaction,
-- is returned as it is, without parsing it again (the JSON check's subtransaction is most of
-- the cost). Otherwise the comment is checked (a WARNING, never an error, when it is
-- malformed or over the limit) and returned as written; '' when there is none.
-- No SET clause: every name, operator and type is qualified (docs/security.md), so each
-- write does not save and restore search_path.
CREATE FUNCTION bemi.comment_context(query text, emitted text) RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
  setting pg_catalog.text := pg_catalog.current_setting('bemi.max_context_bytes', true);
  limit_bytes pg_catalog.int4 := CASE WHEN setting OPERATOR(pg_catalog.<>) '' THEN setting::pg_catalog.int4 ELSE 65536 END;
  tail pg_catalog.text := pg_catalog.rtrim(query, E' \t\r\n;');
  opening pg_catalog.int4;
  body pg_catalog.text;
  parsed pg_catalog.jsonb;
BEGIN
  IF pg_catalog.right(tail, 6) OPERATOR(pg_catalog.<>) 'Bemi*/' THEN
    RETURN '';
  END IF;
  tail := pg_catalog.right(tail, limit_bytes OPERATOR(pg_catalog.+) 64);
  -- The last /*Bemi of the tail: found from its end, as "imeB*/" in the reversed tail.
  opening := pg_catalog.strpos(pg_catalog.reverse(tail), 'imeB*/');
  body := CASE WHEN opening OPERATOR(pg_catalog.>=) 7 THEN pg_catalog.btrim(pg_catalog.substr(tail,
      pg_catalog.length(tail) OPERATOR(pg_catalog.-) opening OPERATOR(pg_catalog.+) 2,
      opening OPERATOR(pg_catalog.-) 7), E' \t\r\n') ELSE '' END;
  IF body OPERATOR(pg_catalog.=) emitted AND body OPERATOR(pg_catalog.<>) '' THEN
    RETURN body;
  END IF;
  IF opening OPERATOR(pg_catalog.=) 0 OR pg_catalog.octet_length(body) OPERATOR(pg_catalog.>) limit_bytes THEN
    RAISE WARNING 'bemi: ignoring a /*Bemi ... Bemi*/ comment over the limit of % bytes', limit_bytes
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Keep contexts small, or raise the setting bemi.max_context_bytes.';
    RETURN '';
  END IF;
  BEGIN
    parsed := body::pg_catalog.jsonb;
  EXCEPTION WHEN invalid_text_representation THEN
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

-- Without a set_context in the transaction, the statement's own /*Bemi ... Bemi*/ comment
-- is the context: one current_query() read and one strpos per statement, never per row.
-- Assignments, not PERFORM: PL/pgSQL evaluates them as simple expressions instead of running
-- a query for each. Remembering what was emitted (one transaction-local set_config, only
-- when emitting) is what keeps emissions to the changes of context.
CREATE FUNCTION bemi.context_trigger() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
  pending pg_catalog.text := coalesce(pg_catalog.current_setting('bemi.context', true), '');
  emitted pg_catalog.text := coalesce(pg_catalog.current_setting('bemi.emitted', true), '');
  query pg_catalog.text;
  written pg_catalog.pg_lsn;
BEGIN
  IF pending OPERATOR(pg_catalog.=) '' THEN
    query := pg_catalog.current_query();
    IF pg_catalog.strpos(query, '/*Bemi') OPERATOR(pg_catalog.>) 0 THEN
      pending := bemi.comment_context(query, emitted);
    END IF;
  END IF;
  -- Operators are qualified: this runs with the writer's search_path (docs/security.md).
  IF pending OPERATOR(pg_catalog.<>) emitted THEN
    written := pg_catalog.pg_logical_emit_message(true, 'bemi',
      CASE WHEN pending OPERATOR(pg_catalog.=) '' THEN '{}' ELSE pending END);
    pending := pg_catalog.set_config('bemi.emitted', pending, true);
  END IF;
  RETURN NULL;
END
$$;
