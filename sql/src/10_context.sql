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
