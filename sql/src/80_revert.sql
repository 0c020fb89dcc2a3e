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
