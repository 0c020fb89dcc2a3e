------------------------------------------------------------------------------------------
-- 1. Context: the application says who, where and how, once per transaction.
--    It lives in a transaction-local setting, like SET LOCAL; nothing is written yet.
--    Holds: bemi.transaction_mark(), bemi.set_context(jsonb), bemi.context().
------------------------------------------------------------------------------------------

-- What marks the settings of this transaction: its start time, exact to the microsecond
-- whatever the session's DateStyle or TimeZone. A session-level SET bemi.context (or one a
-- pooled server connection kept from another client) carries no mark of a later transaction.
CREATE FUNCTION bemi.transaction_mark() RETURNS text
LANGUAGE sql STABLE
RETURN pg_catalog.extract('epoch', pg_catalog.now())::pg_catalog.text;

-- set_context runs once per transaction in the request path. Its cost is the statement, the
-- PL/pgSQL call and the JSON input (docs/benchmarks.md, counted by bench/server_cost.py): it
-- has no SET clause (which cost a sixth of each call, saving and restoring search_path) and
-- qualifies every name, operator and type instead, like the trigger. The context is marked
-- with this transaction (bemi.mark), and what this transaction emitted (bemi.emitted) is
-- carried over only when it carries that mark.
CREATE FUNCTION bemi.set_context(context jsonb) RETURNS void
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

COMMENT ON FUNCTION bemi.set_context(jsonb) IS
  'Sets the application context of the current transaction (a JSON object; NULL clears).';

-- Only a context this transaction set counts.
CREATE FUNCTION bemi.context() RETURNS jsonb
LANGUAGE sql STABLE
RETURN CASE WHEN pg_catalog.current_setting('bemi.mark', true) OPERATOR(pg_catalog.=) bemi.transaction_mark()
  THEN NULLIF(pg_catalog.current_setting('bemi.context', true), '')::pg_catalog.jsonb END;

COMMENT ON FUNCTION bemi.context() IS 'The application context in effect now, or NULL.';
