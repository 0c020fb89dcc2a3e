------------------------------------------------------------------------------------------
-- 11. Uninstall: what bemi-pg uninstall runs before the extension or plain install goes.
--    Holds: bemi.uninstall().
------------------------------------------------------------------------------------------

-- Undoes what bemi did outside its own objects, so that DROP EXTENSION bemi; DROP SCHEMA bemi;
-- (for a plain install, DROP SCHEMA bemi CASCADE) leaves nothing behind: no automatic tracking,
-- every tracked table untracked (trigger off, out of the publication, its replica identity as
-- it was before track), the publication and this database's slots dropped.
-- The trail is kept unless drop_trail: bemi.changes moves to schema bemi_trail, outside the
-- extension, so dropping the extension cannot delete it. Returns where the trail is.
CREATE FUNCTION bemi.uninstall(drop_trail boolean DEFAULT false) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  as_extension boolean := EXISTS (SELECT FROM pg_catalog.pg_extension e WHERE e.extname = 'bemi');
  reader integer;
  relation regclass;
  sequence regclass;
  tied text;
  trigger_name name;
  slot name;
BEGIN
  SELECT s.active_pid INTO reader FROM pg_catalog.pg_replication_slots s
  WHERE s.database = pg_catalog.current_database() AND s.slot_name IN (bemi.slot_name(), 'bemi') AND s.active;
  IF reader IS NOT NULL THEN
    RAISE EXCEPTION 'bemi: process % is reading the slot of this database', reader
      USING ERRCODE = 'object_in_use', HINT = 'Stop bemi-pg worker (and any bemi.ingest() schedule) first.';
  END IF;
  IF NOT drop_trail AND pg_catalog.to_regclass('bemi_trail.changes') IS NOT NULL THEN
    RAISE EXCEPTION 'bemi: bemi_trail.changes exists already (the trail an earlier uninstall kept)'
      USING ERRCODE = 'duplicate_table',
            HINT = 'Rename its schema first (ALTER SCHEMA bemi_trail RENAME TO bemi_trail_before), or pass drop_trail => true.';
  END IF;

  DELETE FROM bemi.auto_tracked;
  FOR relation IN SELECT DISTINCT t.root FROM bemi.tracking t JOIN pg_catalog.pg_class c ON c.oid = t.root LOOP
    PERFORM bemi.untrack(relation);
  END LOOP;
  -- Context triggers bemi.tracking does not know of (copied by hand, or left by 1.0).
  FOR relation, trigger_name IN
    SELECT t.tgrelid, t.tgname FROM pg_catalog.pg_trigger t
    WHERE t.tgfoid = 'bemi.context_trigger()'::pg_catalog.regprocedure
  LOOP
    EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', trigger_name, relation);
  END LOOP;
  -- DROP EXTENSION would leave the publication: publications never belong to an extension.
  IF EXISTS (SELECT FROM pg_catalog.pg_publication p WHERE p.pubname = 'bemi') THEN
    DROP PUBLICATION bemi;
  END IF;

  IF NOT drop_trail THEN
    IF pg_catalog.to_regnamespace('bemi_trail') IS NULL THEN
      CREATE SCHEMA bemi_trail;
    END IF;
    -- The trail and, if it is partitioned, its partitions, parent first.
    FOR relation IN
      SELECT p.relid FROM (SELECT 'bemi.changes'::pg_catalog.regclass AS relid, 0 AS level
                           UNION ALL
                           SELECT t.relid, t.level FROM pg_catalog.pg_partition_tree('bemi.changes') t WHERE t.level > 0) p
      JOIN pg_catalog.pg_class c ON c.oid = p.relid
      WHERE c.relnamespace = 'bemi'::pg_catalog.regnamespace ORDER BY p.level
    LOOP
      -- Indexes, constraints and defaults that call bemi's functions serve bemi alone and
      -- would tie the kept trail to the extension: they go.
      FOR tied IN
        SELECT pg_catalog.format('DROP INDEX %s', i.indexrelid::pg_catalog.regclass)
        FROM pg_catalog.pg_index i
        JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = i.indexrelid
        JOIN pg_catalog.pg_proc f ON d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND f.oid = d.refobjid
        WHERE i.indrelid = relation AND f.pronamespace = 'bemi'::pg_catalog.regnamespace
        UNION
        SELECT pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', relation, co.conname)
        FROM pg_catalog.pg_constraint co
        JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND d.objid = co.oid
        JOIN pg_catalog.pg_proc f ON d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND f.oid = d.refobjid
        WHERE co.conrelid = relation AND f.pronamespace = 'bemi'::pg_catalog.regnamespace
        UNION
        SELECT pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT', relation, a.attname)
        FROM pg_catalog.pg_attrdef ad
        JOIN pg_catalog.pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
        JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND d.objid = ad.oid
        JOIN pg_catalog.pg_proc f ON d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND f.oid = d.refobjid
        WHERE ad.adrelid = relation AND f.pronamespace = 'bemi'::pg_catalog.regnamespace
      LOOP
        EXECUTE tied;
      END LOOP;
      -- Partitions made after CREATE EXTENSION (by ingest) are no members.
      IF as_extension AND EXISTS (SELECT FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                                  AND e.objid = relation AND e.deptype = 'e') THEN
        EXECUTE pg_catalog.format('ALTER EXTENSION bemi DROP TABLE %s', relation);
        -- Its identity sequence is a member too.
        FOR sequence IN
          SELECT d.objid FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
          JOIN pg_catalog.pg_depend e ON e.classid = d.classid AND e.objid = d.objid AND e.deptype = 'e'
          WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = relation AND d.deptype IN ('a', 'i')
        LOOP
          EXECUTE pg_catalog.format('ALTER EXTENSION bemi DROP SEQUENCE %s', sequence);
        END LOOP;
      END IF;
      EXECUTE pg_catalog.format('ALTER TABLE %s SET SCHEMA bemi_trail', relation);
    END LOOP;
    EXECUTE pg_catalog.format('COMMENT ON TABLE bemi_trail.changes IS %L', pg_catalog.format(
      'The audit trail bemi recorded, kept by bemi.uninstall() at %s.', pg_catalog.now()));
  END IF;

  FOR slot IN SELECT s.slot_name FROM pg_catalog.pg_replication_slots s
    WHERE s.database = pg_catalog.current_database() AND s.slot_name IN (bemi.slot_name(), 'bemi')
  LOOP
    PERFORM pg_catalog.pg_drop_replication_slot(slot);
  END LOOP;
  DELETE FROM bemi.progress;
  RETURN CASE WHEN drop_trail THEN 'the trail is dropped with bemi'
    ELSE 'the trail is kept in bemi_trail.changes' END;
END
$$;

COMMENT ON FUNCTION bemi.uninstall(boolean) IS
  'Prepares removing bemi: untracks every table, drops the slot (and a plain install''s publication), keeps the trail in bemi_trail.changes unless drop_trail.';

REVOKE ALL ON FUNCTION bemi.uninstall(boolean) FROM PUBLIC;
