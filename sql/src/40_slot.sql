------------------------------------------------------------------------------------------
-- 5. The slot: one logical slot per database (pgoutput, over the publication "bemi"),
--    keeping the WAL until it is stored.
--    Holds: bemi.slot_name(), bemi.progress, bemi.create_slot(), bemi.drop_slot().
------------------------------------------------------------------------------------------

-- The slot of this database: slot names are cluster-wide, so each database has its own.
CREATE FUNCTION bemi.slot_name() RETURNS name
LANGUAGE sql STABLE
RETURN ('bemi_' || (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()))::name;

COMMENT ON FUNCTION bemi.slot_name() IS 'The name of this database''s logical slot: bemi_<database oid>.';

CREATE TABLE bemi.progress (
  slot_name name PRIMARY KEY,
  lsn pg_lsn NOT NULL,
  ingested_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  stored bigint NOT NULL DEFAULT 0,
  committed_at timestamptz,
  caught_up_at timestamptz,
  part_of pg_lsn,
  part_stored bigint NOT NULL DEFAULT 0
);

COMMENT ON TABLE bemi.progress IS
  'Per slot: the end of the last transaction whose changes are all stored (the slot may be confirmed up to here), a transaction stored in parts so far, and how current the trail is.';
COMMENT ON COLUMN bemi.progress.part_of IS 'The commit LSN of a transaction stored in parts; part_stored of its changes are stored.';
COMMENT ON COLUMN bemi.progress.caught_up_at IS 'Every transaction committed up to this time is stored.';

-- A slot left by an earlier install (DROP EXTENSION keeps slots) keeps WAL and is never read.
DO $$
DECLARE
  leftover name;
BEGIN
  SELECT s.slot_name INTO leftover FROM pg_catalog.pg_replication_slots s
  WHERE s.slot_name = bemi.slot_name() AND NOT EXISTS (SELECT FROM bemi.progress p WHERE p.slot_name = s.slot_name);
  IF FOUND THEN
    RAISE WARNING 'bemi: the slot "%" of an earlier install exists and keeps WAL that nothing reads', leftover
      USING HINT = pg_catalog.format('Drop it with SELECT pg_drop_replication_slot(%L); then SELECT bemi.create_slot();', leftover);
  END IF;
END
$$;

CREATE FUNCTION bemi.create_slot() RETURNS pg_lsn
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  slot name := bemi.slot_name();
  start pg_lsn;
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = slot) THEN
    RAISE EXCEPTION 'bemi: the slot "%" already exists', slot
      USING ERRCODE = 'duplicate_object',
            HINT = 'Changes are being captured already. To start over: SELECT bemi.drop_slot(); SELECT bemi.create_slot();';
  END IF;
  -- First, before this transaction writes anything (a slot cannot be created after writes).
  SELECT s.lsn INTO start FROM pg_catalog.pg_create_logical_replication_slot(slot, 'pgoutput') AS s;
  INSERT INTO bemi.progress (slot_name, lsn) VALUES (slot, start)
  ON CONFLICT (slot_name) DO UPDATE SET lsn = excluded.lsn, ingested_at = excluded.ingested_at,
    committed_at = NULL, caught_up_at = NULL, part_of = NULL, part_stored = 0;
  PERFORM bemi.create_publication();
  -- Moving from 1.0: an install updated from 1.0 whose test_decoding slot "bemi" was not yet
  -- drained has bemi.drain_1_0() (bemi--1.1--1.2.sql). It stores what that slot holds, up to
  -- and past the new slot's start (a change stored by both is stored once: same position and
  -- ordinal), and drops itself with what only it used; then the old slot goes.
  IF pg_catalog.to_regprocedure('bemi.drain_1_0()') IS NOT NULL AND EXISTS (
    SELECT FROM pg_catalog.pg_replication_slots s
    WHERE s.slot_name = 'bemi' AND s.database = pg_catalog.current_database() AND s.plugin = 'test_decoding') THEN
    PERFORM bemi.drain_1_0();
    PERFORM pg_catalog.pg_drop_replication_slot('bemi');
    DELETE FROM bemi.progress p WHERE p.slot_name = 'bemi';
  END IF;
  RETURN start;
END
$$;

COMMENT ON FUNCTION bemi.create_slot() IS
  'Creates this database''s logical slot (pgoutput over the publication bemi); changes are captured from here on. Drains a 1.0 slot first.';

CREATE FUNCTION bemi.drop_slot() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM pg_catalog.pg_drop_replication_slot(bemi.slot_name());
  DELETE FROM bemi.progress p WHERE p.slot_name = bemi.slot_name();
END
$$;

COMMENT ON FUNCTION bemi.drop_slot() IS 'Drops this database''s logical slot; WAL not yet stored is no longer kept.';

REVOKE ALL ON FUNCTION bemi.create_slot(), bemi.drop_slot() FROM PUBLIC;
REVOKE ALL ON bemi.progress FROM PUBLIC;
