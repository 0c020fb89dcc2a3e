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
