------------------------------------------------------------------------------------------
-- 1. Context: the application says who, where and how, once per transaction.
--    It lives in a transaction-local setting, like SET LOCAL; nothing is written yet.
--    Holds: bemi.transaction_mark(), bemi.marked(text), bemi.set_context(jsonb), bemi.context().
------------------------------------------------------------------------------------------

-- What marks the settings of this transaction: its start time, to the microsecond, as the 16
-- hex digits of the 8 bytes PostgreSQL keeps (whatever the session's DateStyle or TimeZone).
-- bemi.context and bemi.emitted hold this mark, then their value: a session-level SET of them
-- (or one a pooled server connection kept from another client) carries no mark of a later
-- transaction, so it never counts.
CREATE FUNCTION bemi.transaction_mark() RETURNS text
LANGUAGE sql STABLE
RETURN pg_catalog.encode(pg_catalog.timestamptz_send(pg_catalog.now()), 'hex');

-- The value of a marked setting when this transaction made it; '' otherwise.
CREATE FUNCTION bemi.marked(setting text) RETURNS text
LANGUAGE sql STABLE
RETURN CASE WHEN pg_catalog.starts_with(setting, bemi.transaction_mark()) THEN pg_catalog.substr(setting, 17) ELSE '' END;

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

COMMENT ON FUNCTION bemi.set_context(jsonb) IS
  'Sets the application context of the current transaction (a JSON object; NULL clears).';

-- Only a context this transaction set counts.
CREATE FUNCTION bemi.context() RETURNS jsonb
LANGUAGE sql STABLE
RETURN NULLIF(bemi.marked(pg_catalog.current_setting('bemi.context', true)), '')::pg_catalog.jsonb;

COMMENT ON FUNCTION bemi.context() IS 'The application context in effect now, or NULL.';
