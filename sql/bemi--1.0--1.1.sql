\echo Use "ALTER EXTENSION bemi UPDATE TO '1.1'" to load this file. \quit

-- bemi 1.1. A fresh CREATE EXTENSION bemi runs bemi--1.0.sql and then this script, so a new
-- install and an upgraded one are the same by construction (tests/test_upgrade.py compares them).
-- Sections follow a change on its way, as in 1.0: context, trigger, tracking, slot,
-- decoding, storing; then what reads the trail (time travel, revert) and uninstalling.

------------------------------------------------------------------------------------------
-- 1. Context: the application says who, where and how, once per transaction.
------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------
-- 2. The context trigger: before each statement on a tracked table, put the context into
--    the WAL, once, and only when it differs from the last one this transaction emitted.
------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------
-- 3. Tracking: a tracked table carries the context trigger, logs whole rows (REPLICA
--    IDENTITY FULL) and is a member of the publication the slot decodes.
------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------
-- 4. Tracking new tables: an event trigger tracks tables and partitions created later.
------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------
-- 5. The slot: one logical slot per database (pgoutput, over the publication "bemi"),
--    keeping the WAL until it is stored.
------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------
-- 6. Decoding: pgoutput's binary messages, read by the SQL path (bemi.ingest, bemi.wal).
--    The streaming worker reads the same messages in Python (python/bemi_pg/pgoutput.py).
------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------
-- 7. Storing: both readers stage changes with their values as text; one converter turns
--    them into typed JSON with the server's own input functions and stores them once.
------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------
-- 8. Time travel: a row or a whole table as it was at a commit time, from the trail.
------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------
-- 9. Revert: undo the net effect of changes, conflict-checked, in the caller's transaction.
------------------------------------------------------------------------------------------

------------------------------------------------------------------------------------------
-- 10. Uninstall: what bemi-pg uninstall runs before the extension or plain install goes.
------------------------------------------------------------------------------------------
