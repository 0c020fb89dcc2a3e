-- The two approaches users would otherwise pick, as baselines for the benchmark.
-- Both are per-row triggers; bemi's own trigger runs once per statement.

CREATE SCHEMA bench;

-- Row-trigger emit: the context travels as a SQL comment leading every statement
-- (/*Bemi {...} Bemi*/), a per-row trigger reads it back from current_query() and
-- puts one logical message per row into the WAL. The pattern is matched against the first
-- 4 kB of the query only: over the whole query, a 10,000-row multi-VALUES INSERT (1.3 MB of
-- SQL) took 143 s instead of 1.2 s, as every row scans the whole text again.
CREATE FUNCTION bench.emit_row_context() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
  context text := pg_catalog.substring(pg_catalog.left(pg_catalog.current_query(), 4096), '/\*Bemi (.*) Bemi\*/');
BEGIN
  IF context IS NOT NULL THEN
    PERFORM pg_catalog.pg_logical_emit_message(true, 'bench', context);
  END IF;
  RETURN NULL;
END
$$;

-- Audit table: a per-row trigger copies both row images and the context (a
-- transaction-local setting, like bemi's) into an ordinary table.
CREATE TABLE bench.audit (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  table_name text NOT NULL,
  operation text NOT NULL,
  before jsonb,
  after jsonb,
  context jsonb,
  changed_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

CREATE FUNCTION bench.audit_row() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
  INSERT INTO bench.audit (table_name, operation, before, after, context)
  VALUES (TG_TABLE_NAME, TG_OP,
    CASE WHEN TG_OP <> 'INSERT' THEN pg_catalog.to_jsonb(OLD) END,
    CASE WHEN TG_OP <> 'DELETE' THEN pg_catalog.to_jsonb(NEW) END,
    NULLIF(pg_catalog.current_setting('bench.context', true), '')::jsonb);
  RETURN NULL;
END
$$;
