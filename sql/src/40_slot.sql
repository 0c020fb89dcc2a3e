------------------------------------------------------------------------------------------
-- 5. The slot: one logical slot per database (pgoutput, over the publication "bemi"),
--    keeping the WAL until it is stored.
--    Holds: bemi.slot_name(), bemi.progress, bemi.gaps, bemi.open_gap(), bemi.close_gaps(),
--    bemi.note_gap(), bemi.coverage_report(), bemi.coverage, bemi.trail_location, bemi.trail_stored_in(),
--    bemi.refuse_trail_elsewhere(), bemi.move_trail_to(), bemi.trail_here(), bemi.create_slot(), bemi.drop_slot().
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
  part_stored bigint NOT NULL DEFAULT 0,
  part_transaction bigint
);

COMMENT ON TABLE bemi.progress IS
  'Per slot: the end of the last transaction whose changes are all stored (the slot may be confirmed up to here), a transaction stored in parts so far, and how current the trail is.';
COMMENT ON COLUMN bemi.progress.part_of IS 'The commit LSN of a transaction stored in parts; part_stored of its changes are stored.';
COMMENT ON COLUMN bemi.progress.caught_up_at IS 'Every transaction committed up to this time is stored.';
COMMENT ON COLUMN bemi.progress.part_transaction IS 'The transaction id of the transaction stored in parts (part_of).';

-- The coverage record: every span of the WAL (and of commit time) whose changes the trail may
-- not hold, with its cause. The trail holds a table completely after the end of its last gap
-- (bemi.coverage, section 8); time travel refuses moments before it. relation NULL: every
-- table of the slot. An open gap (to_at NULL) lasts until capture resumes.
CREATE TABLE bemi.gaps (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  slot_name name NOT NULL,
  relation oid,
  schema text,
  "table" text,
  cause text NOT NULL CHECK (cause IN ('tracked before the slot', 'slot dropped', 'slot lost', 'trail split',
                                       'trail moved', 'tracking paused')),
  from_lsn pg_lsn,
  from_at timestamptz,
  to_lsn pg_lsn,
  to_at timestamptz,
  detail text,
  noted_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);

COMMENT ON TABLE bemi.gaps IS
  'Spans whose changes the trail may not hold, with their cause: from the last position and commit time known stored to where capture resumed (NULL: not yet).';
COMMENT ON COLUMN bemi.gaps.relation IS 'The table the gap is of (its schema and table names then), or NULL: every table of the slot.';
SELECT pg_catalog.pg_extension_config_dump('bemi.gaps', '');
SELECT pg_catalog.pg_extension_config_dump('bemi.gaps_id_seq', '');

-- Records a gap that begins where the trail is complete (or at a given start) and lasts until
-- a capture resumes (bemi.close_gaps) unless it ends at to_lsn. Returns its id.
CREATE FUNCTION bemi.open_gap(slot name, cause text, relation oid DEFAULT NULL, from_lsn pg_lsn DEFAULT NULL,
  from_at timestamptz DEFAULT NULL, to_lsn pg_lsn DEFAULT NULL, to_at timestamptz DEFAULT NULL, detail text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
BEGIN ATOMIC
  INSERT INTO bemi.gaps (slot_name, relation, schema, "table", cause, from_lsn, from_at, to_lsn, to_at, detail)
  SELECT open_gap.slot, open_gap.relation, n.nspname, c.relname, open_gap.cause,
    coalesce(open_gap.from_lsn, p.lsn), coalesce(open_gap.from_at, p.caught_up_at), open_gap.to_lsn, open_gap.to_at, open_gap.detail
  FROM (SELECT) AS one
  LEFT JOIN bemi.progress p ON p.slot_name = open_gap.slot
  LEFT JOIN pg_catalog.pg_class c ON c.oid = open_gap.relation
  LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  RETURNING id;
END;

-- Ends the open gaps of a slot (of one table, or of the slot as a whole) where capture resumed.
CREATE FUNCTION bemi.close_gaps(slot name, to_lsn pg_lsn, to_at timestamptz, relation oid DEFAULT NULL) RETURNS bigint
LANGUAGE sql
BEGIN ATOMIC
  WITH closed AS (
    UPDATE bemi.gaps g SET to_lsn = close_gaps.to_lsn, to_at = close_gaps.to_at
    WHERE g.slot_name = close_gaps.slot AND g.to_at IS NULL AND g.relation IS NOT DISTINCT FROM close_gaps.relation
    RETURNING g.id)
  SELECT pg_catalog.count(*) FROM closed;
END;

-- For the worker, where it stores (here, or a trail database): what it finds before it
-- streams. The slot is gone (to_lsn NULL: a gap that stays open until capture resumes), or
-- the slot confirmed past what this trail holds (another trail, a worker storing elsewhere, a
-- synced slot ahead of its standby's trail): the span between is a gap; one left open ends here.
-- SECURITY DEFINER: the worker's role may record gaps, not write bemi.gaps.
CREATE FUNCTION bemi.note_gap(slot name, cause text, from_lsn pg_lsn, to_lsn pg_lsn, detail text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF cause IS NULL OR cause NOT IN ('slot lost', 'trail split', 'trail moved') THEN
    RAISE EXCEPTION 'bemi: a worker records a gap as slot lost, trail split or trail moved, not %', coalesce(cause, 'NULL')
      USING ERRCODE = 'invalid_parameter_value';
  ELSIF to_lsn IS NULL THEN
    IF EXISTS (SELECT FROM bemi.gaps g WHERE g.slot_name = note_gap.slot AND g.relation IS NULL AND g.to_at IS NULL) THEN
      RETURN NULL;
    END IF;
    RETURN bemi.open_gap(slot, cause, NULL, from_lsn, NULL, NULL, NULL, detail);
  ELSIF bemi.close_gaps(slot, to_lsn, pg_catalog.clock_timestamp()) > 0 THEN
    RETURN NULL;
  ELSIF EXISTS (SELECT FROM bemi.gaps g WHERE g.slot_name = note_gap.slot AND g.relation IS NULL
                AND g.cause = note_gap.cause AND g.to_lsn = note_gap.to_lsn) THEN
    RETURN NULL;  -- recorded already (by a worker that stopped before it went on)
  END IF;
  RETURN bemi.open_gap(slot, cause, NULL, from_lsn, NULL, to_lsn, pg_catalog.clock_timestamp(), detail);
END
$$;

-- What the trail of a slot does not cover, for bemi-pg status and monitoring: every gap (open
-- ones first), and a transaction stored only in part. Cheap: it reads two small tables.
-- SECURITY DEFINER: a monitoring role may call it without reading the trail.
CREATE FUNCTION bemi.coverage_report(slot name DEFAULT bemi.slot_name())
RETURNS TABLE (cause text, schema text, "table" text, from_lsn pg_lsn, from_at timestamptz, to_lsn pg_lsn, to_at timestamptz,
  open boolean, detail text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
  SELECT r.cause, r.schema, r."table", r.from_lsn, r.from_at, r.to_lsn, r.to_at, r.open, r.detail FROM (
    SELECT g.cause, g.schema, g."table", g.from_lsn, g.from_at, g.to_lsn, g.to_at, g.to_at IS NULL AS open, g.detail, g.id
    FROM bemi.gaps g WHERE g.slot_name = coverage_report.slot
    UNION ALL
    SELECT 'transaction stored in part', NULL, NULL, p.lsn, p.caught_up_at, p.part_of, NULL, true,
      pg_catalog.format('transaction %s: %s of its changes stored; the rest is stored when ingest goes on', p.part_transaction, p.part_stored),
      NULL
    FROM bemi.progress p WHERE p.slot_name = coverage_report.slot AND p.part_of IS NOT NULL
  ) AS r
  ORDER BY r.open DESC, r.from_lsn, r.id;
END;

COMMENT ON FUNCTION bemi.coverage_report(name) IS
  'The gaps in the trail of a slot (open ones first) and a transaction stored only in part: what bemi-pg status reports.';

-- Per tracked table: from when on the trail holds it completely (after its last gap; NULL:
-- from the start of tracking), up to when (bemi.ingested_until), and its gaps.
CREATE VIEW bemi.coverage AS
SELECT t.relation::pg_catalog.regclass AS relation, t.schema, t."table", t.tracked_at,
  g.last_gap_end AS covered_from, g.last_gap_end_lsn AS covered_from_lsn,
  p.caught_up_at AS covered_until, p.lsn AS covered_until_lsn, p.part_of AS part_stored_commit_lsn,
  coalesce(g.gaps, '[]') AS gaps
FROM bemi.tracking t
LEFT JOIN bemi.progress p ON p.slot_name = bemi.slot_name()
LEFT JOIN LATERAL (
  SELECT pg_catalog.max(coalesce(x.to_at, 'infinity')) AS last_gap_end,
    (pg_catalog.array_agg(x.to_lsn ORDER BY coalesce(x.to_at, 'infinity') DESC))[1] AS last_gap_end_lsn,
    pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('cause', x.cause, 'from_lsn', x.from_lsn, 'from_at', x.from_at,
      'to_lsn', x.to_lsn, 'to_at', x.to_at, 'detail', x.detail) ORDER BY x.id) AS gaps
  FROM bemi.gaps x WHERE x.slot_name = bemi.slot_name() AND (x.relation IS NULL OR x.relation = t.relation)
) AS g ON true
WHERE t.relation = t.root;

COMMENT ON VIEW bemi.coverage IS
  'Per tracked table: the span the trail holds completely (covered_from, exclusive, to covered_until) and the gaps before it.';

-- Where the trail of a slot is stored when it is not here: in a trail database (bemi-pg worker
-- --trail-dsn), named by its server's system identifier and its name, recorded when a worker
-- starts storing there. While a row says so, nothing stores into this database's own trail
-- (bemi.ingest(), a worker without --trail-dsn) nor into another trail database: the trail
-- never splits. No row: the trail is here. bemi.trail_here() brings it back.
CREATE TABLE bemi.trail_location (
  slot_name name PRIMARY KEY,
  system_identifier bigint NOT NULL,
  database name NOT NULL,
  since timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);

COMMENT ON TABLE bemi.trail_location IS
  'Per slot: the trail database its trail is stored in (system identifier and name) and since when; no row: here.';
SELECT pg_catalog.pg_extension_config_dump('bemi.trail_location', '');

-- Where the trail of a slot is stored (no row: here).
-- SECURITY DEFINER: every worker, whatever its grants, and bemi-pg status must know where the
-- trail is; it tells a server's system identifier and a database name.
CREATE FUNCTION bemi.trail_stored_in(slot name DEFAULT bemi.slot_name())
RETURNS TABLE (system_identifier bigint, database name, since timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
  SELECT l.system_identifier, l.database, l.since FROM bemi.trail_location l WHERE l.slot_name = trail_stored_in.slot;
END;

COMMENT ON FUNCTION bemi.trail_stored_in(name) IS
  'The trail database the trail of a slot is stored in (no row: here, in this database).';

-- Raises (ZB003) unless the trail of the slot is stored where the caller would store it: here
-- (system_identifier NULL), or in the trail database named. Not recorded anywhere: here.
CREATE FUNCTION bemi.refuse_trail_elsewhere(slot name, system_identifier bigint DEFAULT NULL, database name DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  place record;
BEGIN
  SELECT l.system_identifier, l.database, l.since INTO place FROM bemi.trail_location l WHERE l.slot_name = slot;
  IF FOUND AND (place.system_identifier, place.database)
      IS DISTINCT FROM (refuse_trail_elsewhere.system_identifier, refuse_trail_elsewhere.database) THEN
    RAISE EXCEPTION 'bemi: the trail of database "%" is stored in the trail database "%" (system identifier %) since %: storing it % would split it',
      pg_catalog.current_database(), place.database, place.system_identifier, place.since,
      CASE WHEN refuse_trail_elsewhere.database IS NULL THEN 'here'
        ELSE pg_catalog.format('in "%s" (system identifier %s)', refuse_trail_elsewhere.database, refuse_trail_elsewhere.system_identifier) END
      USING ERRCODE = 'ZB003',
            HINT = 'Run bemi-pg worker with --trail-dsn naming that database. To bring the trail back here, stop the worker and, as the extension''s owner, SELECT bemi.trail_here(); (or bemi-pg worker --trail-here).';
  END IF;
END
$$;

-- The trail database a worker stores into (bemi-pg worker --trail-dsn), recorded as it starts:
-- true when the trail moves there now (it was here), false when it is there already; refused
-- (ZB003) when another trail database holds it. After a bemi.ingest() under way, which stores
-- here; the next one refuses.
-- SECURITY DEFINER: the worker's role records where it stores; it may not write bemi.trail_location.
CREATE FUNCTION bemi.move_trail_to(system_identifier bigint, database name) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF system_identifier IS NULL OR database IS NULL THEN
    RAISE EXCEPTION 'bemi: a trail database is named by its system identifier and its name, both given'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('bemi.ingest'));
  PERFORM bemi.refuse_trail_elsewhere(bemi.slot_name(), system_identifier, database);
  INSERT INTO bemi.trail_location (slot_name, system_identifier, database)
  VALUES (bemi.slot_name(), move_trail_to.system_identifier, move_trail_to.database)
  ON CONFLICT (slot_name) DO NOTHING;
  RETURN FOUND;
END
$$;

COMMENT ON FUNCTION bemi.move_trail_to(bigint, name) IS
  'Records that the trail of this database''s slot is stored in a trail database from now on (bemi-pg worker --trail-dsn).';

-- Brings the trail of this database's slot back here from the trail database it was stored
-- in: the changes stored there are not in this trail, a gap (trail moved) up to where the
-- slot is confirmed, and this trail goes on from there. Refused while a worker ingests (stop
-- it first; one stopping is waited for, 5 seconds at most). Returns where this trail goes on;
-- NULL when the trail was here already.
CREATE FUNCTION bemi.trail_here() RETURNS pg_lsn
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  slot name := bemi.slot_name();
  place record;
  confirmed pg_lsn;
BEGIN
  PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('bemi.ingest'));
  -- A worker that was just stopped lets go of its lock and the slot within moments.
  FOR attempt IN 1..100 LOOP
    EXIT WHEN pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('bemi.worker'))
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = slot AND s.active);
    IF attempt = 100 THEN
      RAISE EXCEPTION 'bemi: a worker is ingesting database "%": stop it before bringing the trail back', pg_catalog.current_database()
        USING ERRCODE = 'object_in_use';
    END IF;
    PERFORM pg_catalog.pg_sleep(0.05);
  END LOOP;
  DELETE FROM bemi.trail_location l WHERE l.slot_name = slot RETURNING l.system_identifier, l.database INTO place;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  SELECT s.confirmed_flush_lsn INTO confirmed FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = slot;
  IF confirmed > (SELECT p.lsn FROM bemi.progress p WHERE p.slot_name = slot) THEN
    PERFORM bemi.open_gap(slot, 'trail moved', NULL, NULL, NULL, confirmed, pg_catalog.clock_timestamp(),
      pg_catalog.format('the trail was stored in the trail database %I (system identifier %s) up to %s: those changes are there, not here',
        place.database, place.system_identifier, confirmed));
    UPDATE bemi.progress p SET lsn = confirmed, part_of = NULL, part_stored = 0, part_transaction = NULL
    WHERE p.slot_name = slot;
  END IF;
  RETURN confirmed;
END
$$;

COMMENT ON FUNCTION bemi.trail_here() IS
  'Brings the trail of this database''s slot back here from its trail database (a gap, trail moved, for what is stored there).';

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
  started timestamptz;
  lost record;
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = slot) THEN
    RAISE EXCEPTION 'bemi: the slot "%" already exists', slot
      USING ERRCODE = 'duplicate_object',
            HINT = 'Changes are being captured already. To start over: SELECT bemi.drop_slot(); SELECT bemi.create_slot();';
  END IF;
  -- First, before this transaction writes anything (a slot cannot be created after writes).
  -- From 17 on a failover slot: synchronized to a standby, it survives a promotion (docs/ingest.md).
  IF pg_catalog.current_setting('server_version_num')::integer >= 170000 THEN
    EXECUTE 'SELECT s.lsn FROM pg_catalog.pg_create_logical_replication_slot($1, ''pgoutput'', false, false, true) AS s'
      INTO start USING slot;
  ELSE
    SELECT s.lsn INTO start FROM pg_catalog.pg_create_logical_replication_slot(slot, 'pgoutput') AS s;
  END IF;
  -- Every transaction that commits from now on is decoded (the slot is consistent).
  started := pg_catalog.clock_timestamp();
  -- The coverage record: a progress row without its slot means the slot was lost (a failover
  -- before 17, an invalidation, a drop by hand): what it had not stored is a gap. Tables
  -- tracked before the first slot lost their writes up to now. An open gap ends here.
  SELECT p.lsn, p.caught_up_at INTO lost FROM bemi.progress p WHERE p.slot_name = slot;
  IF bemi.close_gaps(slot, start, started) = 0 THEN
    IF lost.lsn IS NOT NULL THEN
      PERFORM bemi.open_gap(slot, 'slot lost', NULL, lost.lsn, lost.caught_up_at, start, started,
        'the slot disappeared while the trail was complete only up to here: a failover, an invalidation or a drop by hand');
    ELSIF EXISTS (SELECT FROM bemi.tracking) THEN
      PERFORM bemi.open_gap(slot, 'tracked before the slot', NULL, NULL, (SELECT pg_catalog.min(t.tracked_at) FROM bemi.tracking t),
        start, started, 'tables were tracked before the slot existed: their writes up to here were not captured');
    END IF;
  END IF;
  INSERT INTO bemi.progress (slot_name, lsn) VALUES (slot, start)
  ON CONFLICT (slot_name) DO UPDATE SET lsn = excluded.lsn, ingested_at = excluded.ingested_at,
    committed_at = NULL, caught_up_at = NULL, part_of = NULL, part_stored = 0, part_transaction = NULL;
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
  -- What the slot held and the trail did not is lost: a gap until the next create_slot.
  IF EXISTS (SELECT FROM bemi.progress p WHERE p.slot_name = bemi.slot_name())
     AND NOT EXISTS (SELECT FROM bemi.gaps g WHERE g.slot_name = bemi.slot_name() AND g.relation IS NULL AND g.to_at IS NULL) THEN
    PERFORM bemi.open_gap(bemi.slot_name(), 'slot dropped', NULL, NULL, NULL, NULL, NULL,
      'bemi.drop_slot(): writes after the trail''s last complete commit are not captured until bemi.create_slot()');
  END IF;
  DELETE FROM bemi.progress p WHERE p.slot_name = bemi.slot_name();
END
$$;

COMMENT ON FUNCTION bemi.drop_slot() IS 'Drops this database''s logical slot; WAL not yet stored is no longer kept (a gap in bemi.gaps until bemi.create_slot()).';

REVOKE ALL ON FUNCTION bemi.create_slot(), bemi.drop_slot() FROM PUBLIC;
REVOKE ALL ON bemi.progress, bemi.gaps, bemi.coverage FROM PUBLIC;
REVOKE ALL ON FUNCTION bemi.coverage_report(name), bemi.note_gap(name, text, pg_lsn, pg_lsn, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION bemi.open_gap(name, text, oid, pg_lsn, timestamptz, pg_lsn, timestamptz, text),
  bemi.close_gaps(name, pg_lsn, timestamptz, oid) FROM PUBLIC;
REVOKE ALL ON bemi.trail_location FROM PUBLIC;
REVOKE ALL ON FUNCTION bemi.trail_stored_in(name), bemi.refuse_trail_elsewhere(name, bigint, name),
  bemi.move_trail_to(bigint, name), bemi.trail_here() FROM PUBLIC;
-- Where the trail is, no secret: every worker role and bemi-pg status read it.
GRANT EXECUTE ON FUNCTION bemi.trail_stored_in(name) TO PUBLIC;
