"""A comparable description of what bemi installed in a database: one line per object.

Two installs are the same objects when their snapshots are equal. The snapshot covers schema
bemi (functions with their definitions: body, arguments, volatility, security, SET clauses;
their owners, privileges and comments; tables, views, sequences and composite types with their
columns, defaults, constraints, indexes, triggers, options, owners, privileges and comments),
the event triggers, the publication with its tables, the schema itself and, for the extension,
its member objects and configuration tables (with their conditions; an entry whose table is
gone shows as such). Partitions of the trail are in it too, by name.
"""

from __future__ import annotations

import psycopg

SNAPSHOT = r"""
WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = 'bemi')
SELECT line FROM (
  SELECT 'function ' || p.oid::regprocedure || ' owner ' || p.proowner::regrole || ' acl ' || coalesce(p.proacl::text, '-')
         || ' comment ' || coalesce(obj_description(p.oid, 'pg_proc'), '-') || E'\n' || pg_get_functiondef(p.oid)
  FROM pg_proc p WHERE p.pronamespace = (SELECT oid FROM ns)
  UNION ALL
  SELECT format('relation %s kind %s persistence %s identity %s partitioned %s bound %s owner %s acl %s options %s comment %s',
                c.relname, c.relkind, c.relpersistence, c.relreplident, coalesce(pg_get_partkeydef(c.oid), '-'),
                coalesce(pg_get_expr(c.relpartbound, c.oid), '-'), c.relowner::regrole, coalesce(c.relacl::text, '-'),
                coalesce(c.reloptions::text, '-'), coalesce(obj_description(c.oid, 'pg_class'), '-'))
  FROM pg_class c WHERE c.relnamespace = (SELECT oid FROM ns)
  UNION ALL
  SELECT format('column %s.%s %s %s notnull %s default %s identity %s generated %s acl %s comment %s',
                c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                coalesce(pg_get_expr(d.adbin, d.adrelid), '-'), a.attidentity, a.attgenerated, coalesce(a.attacl::text, '-'),
                coalesce(col_description(c.oid, a.attnum), '-'))
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  WHERE c.relnamespace = (SELECT oid FROM ns) AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT 'index ' || pg_get_indexdef(i.indexrelid) || ' comment ' || coalesce(obj_description(i.indexrelid, 'pg_class'), '-')
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
  WHERE c.relnamespace = (SELECT oid FROM ns)
  UNION ALL
  SELECT format('constraint %s %s %s local %s inherited %s', co.conrelid::regclass, co.conname, pg_get_constraintdef(co.oid),
                co.conislocal, co.coninhcount)
  FROM pg_constraint co WHERE co.connamespace = (SELECT oid FROM ns)
  UNION ALL
  SELECT format('view %s %s', c.relname, pg_get_viewdef(c.oid)) FROM pg_class c
  WHERE c.relnamespace = (SELECT oid FROM ns) AND c.relkind IN ('v', 'm')
  UNION ALL
  SELECT 'trigger ' || pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  WHERE c.relnamespace = (SELECT oid FROM ns) AND NOT t.tgisinternal
  UNION ALL
  SELECT format('sequence %s %s %s %s %s %s %s', s.seqrelid::regclass, s.seqtypid::regtype, s.seqstart, s.seqincrement,
                s.seqmax, s.seqcycle,
                (SELECT string_agg(d.refobjid::regclass || '.' || d.refobjsubid || ' ' || d.deptype::text, ',')
                 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid
                   AND d.refclassid = 'pg_class'::regclass))
  FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid WHERE c.relnamespace = (SELECT oid FROM ns)
  UNION ALL
  SELECT format('type %s %s %s owner %s acl %s comment %s', t.typname, t.typtype,
                (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid),
                t.typowner::regrole, coalesce(t.typacl::text, '-'), coalesce(obj_description(t.oid, 'pg_type'), '-'))
  FROM pg_type t WHERE t.typnamespace = (SELECT oid FROM ns)
  UNION ALL
  SELECT format('event trigger %s %s %s %s %s owner %s', e.evtname, e.evtevent, e.evtfoid::regprocedure, e.evtenabled,
                e.evttags, e.evtowner::regrole)
  FROM pg_event_trigger e
  UNION ALL
  SELECT format('publication %s %s %s %s %s %s %s generated columns %s', p.pubname, p.puballtables, p.pubinsert,
                p.pubupdate, p.pubdelete, p.pubtruncate, p.pubviaroot, coalesce(to_jsonb(p) ->> 'pubgencols', '-'))
  FROM pg_publication p  -- pubgencols: PostgreSQL 18 on
  UNION ALL
  SELECT format('publication %s table %s', p.pubname, r.prrelid::regclass)
  FROM pg_publication p JOIN pg_publication_rel r ON r.prpubid = p.oid
  UNION ALL
  SELECT format('schema %s owner %s acl %s', n.nspname, n.nspowner::regrole, n.nspacl) FROM pg_namespace n
  WHERE n.oid = (SELECT oid FROM ns)
  UNION ALL
  SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_depend d
  JOIN pg_extension x ON x.oid = d.refobjid AND x.extname = 'bemi'
  WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
  UNION ALL
  SELECT 'configuration ' || coalesce(c.oid::regclass::text, 'of a table that does not exist')
         || ' ' || coalesce(x.extcondition[k.i], '-')
  FROM pg_extension x CROSS JOIN LATERAL generate_subscripts(x.extconfig, 1) AS k(i)
  LEFT JOIN pg_class c ON c.oid = x.extconfig[k.i]
  WHERE x.extname = 'bemi'
) AS dump(line)
ORDER BY line COLLATE "C"
"""


def snapshot(dsn: str) -> list[str]:
    """The snapshot of what bemi installed in the database (see the module docstring)."""
    with psycopg.connect(dsn) as conn:
        return [row[0] for row in conn.execute(SNAPSHOT)]


def difference(a: list[str], b: list[str]) -> list[str]:
    """The lines of one snapshot that the other lacks, marked - (only in a) and + (only in b)."""
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    return [f"- {line}" for line in only_a] + [f"+ {line}" for line in only_b]
