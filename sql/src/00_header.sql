\echo Use "CREATE EXTENSION bemi" to load this file. \quit

-- bemi: automatic, context-aware change tracking.
--
-- This file is built from sql/src/ by the Makefile (make sql/bemi--<version>.sql): the files
-- there, read in order, are the one current definition of the extension. Edit them, not this.
-- Sections follow a change on its way: context, trigger, tracking, new tables, slot, decoding,
-- storing; then what reads the trail (time travel, revert), retention and uninstalling.
--
-- 00_header: the install-time check of wal_level, and the schema's privileges.

DO $$
BEGIN
  IF pg_catalog.current_setting('wal_level') <> 'logical' THEN
    RAISE WARNING 'bemi: wal_level is "%", changes cannot be decoded until it is "logical"',
      pg_catalog.current_setting('wal_level')
      USING HINT = 'ALTER SYSTEM SET wal_level = logical; then restart the server.';
  END IF;
END
$$;

-- Everyone may see what is in the schema; each object's own privileges say who may use it.
GRANT USAGE ON SCHEMA bemi TO PUBLIC;
