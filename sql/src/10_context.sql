------------------------------------------------------------------------------------------
-- 1. Context: the application says who, where and how, once per transaction.
--    It lives in a transaction-local setting, like SET LOCAL; nothing is written yet.
--    Holds: bemi.set_context(jsonb), bemi.context().
------------------------------------------------------------------------------------------

-- set_context runs once per transaction in the request path. Its cost is the statement, the
-- PL/pgSQL call and the JSON input (docs/benchmarks.md, counted by bench/server_cost.py): it
-- has no SET clause (which cost a sixth of each call, saving and restoring search_path) and
-- qualifies every name, operator and type instead, like the trigger.
CREATE FUNCTION bemi.set_context(context jsonb) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
  body pg_catalog.text := context::pg_catalog.text;
  setting pg_catalog.text := pg_catalog.current_setting('bemi.max_context_bytes', true);
  limit_bytes pg_catalog.int4 := CASE WHEN setting OPERATOR(pg_catalog.<>) '' THEN setting::pg_catalog.int4 ELSE 65536 END;
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
  body := pg_catalog.set_config('bemi.context',
    CASE WHEN body IS NULL OR body OPERATOR(pg_catalog.=) '{}' THEN '' ELSE body END, true);
END
$$;

COMMENT ON FUNCTION bemi.set_context(jsonb) IS
  'Sets the application context of the current transaction (a JSON object; NULL clears).';

CREATE FUNCTION bemi.context() RETURNS jsonb
LANGUAGE sql STABLE
RETURN nullif(pg_catalog.current_setting('bemi.context', true), '')::jsonb;

COMMENT ON FUNCTION bemi.context() IS 'The application context in effect now, or NULL.';
