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
