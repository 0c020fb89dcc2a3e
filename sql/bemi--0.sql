\echo Use "CREATE EXTENSION bemi" to load this file. \quit

-- bemi's gate: the first step of CREATE EXTENSION bemi (the Makefile installs the standalone
-- script as the step after it, bemi--0--<version>.sql). It refuses servers older than
-- PostgreSQL 14 before anything is installed: CREATE EXTENSION parses a whole script before it
-- runs any of it, and 13 cannot parse the next one, so the check must be a script of its own.
-- Nothing here but the check; it parses on any version. bemi-pg install checks the same in
-- Python (python/bemi_pg/install.py).
DO $$
BEGIN
  IF pg_catalog.current_setting('server_version_num')::integer < 140000 THEN
    RAISE EXCEPTION 'bemi: PostgreSQL % is not supported: bemi needs PostgreSQL 14 or newer',
      pg_catalog.current_setting('server_version')
      USING ERRCODE = 'feature_not_supported',
        HINT = 'bemi reads changes through pgoutput, which sends the logical messages that carry each change''s context from PostgreSQL 14 on. Upgrade the server.';
  END IF;
END
$$;
