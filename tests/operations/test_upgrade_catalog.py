"""An upgraded install and a plain install are the objects of a fresh CREATE EXTENSION bemi.

A fresh 1.2 runs the standalone bemi--1.2.sql (built from sql/src/); the upgrades run the
released 1.0 and 1.1 scripts and then the update scripts. Each database has a trail and pending
changes when it is updated; they are compared, object by object (tests/helpers/catalog.py), once the
pending changes are stored.
"""

from __future__ import annotations

import psycopg
import pytest
from tests.fixtures.database import NewDatabase
from tests.helpers.catalog import difference, snapshot
from tests.helpers.installs import WAYS, catch_up


def made(new_database: NewDatabase, way: str) -> str:
    how, as_owner = WAYS[way]
    dsn = new_database(as_owner=as_owner)
    how(dsn)
    catch_up(dsn)
    return dsn


@pytest.mark.parametrize("way", ["from 1.0", "from 1.1"])
def test_an_updated_extension_equals_a_fresh_one(new_database: NewDatabase, way: str) -> None:
    fresh = snapshot(made(new_database, "fresh"))
    assert any(line.startswith("member function bemi.index_partition(regclass)") for line in fresh)
    assert any(line.startswith("publication bemi table todo") for line in fresh)
    assert not any("configuration of a table that does not exist" in line for line in fresh)
    assert difference(snapshot(made(new_database, way)), fresh) == []


def test_the_drain_objects_stay_until_the_1_0_slot_is_drained(new_database: NewDatabase) -> None:
    dsn = new_database()
    WAYS["from 1.0"][0](dsn)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT to_regclass('bemi.names') IS NOT NULL").fetchone() == (True,)
    catch_up(dsn)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT to_regclass('bemi.names'), to_regprocedure('bemi.drain_1_0()'), "
                            "to_regprocedure('bemi.ingest_test_decoding(integer)')").fetchone() == (None, None, None)
        assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'bemi'").fetchone() == (0,)


@pytest.mark.parametrize("way", ["plain from 1.0", "plain from 1.1"])
def test_an_upgraded_plain_install_equals_a_fresh_one(new_database: NewDatabase, way: str) -> None:
    assert difference(snapshot(made(new_database, way)), snapshot(made(new_database, "plain"))) == []


def test_a_plain_install_has_the_objects_of_the_extension(new_database: NewDatabase) -> None:
    """Installed by the same non-superuser role, plain and extension differ only in what makes
    one an extension (members, configuration tables) and the plain install's version table."""
    plain = made(new_database, "plain")
    extension = new_database(as_owner=True)
    WAYS["fresh"][0](extension)
    catch_up(extension)

    def objects(dsn: str) -> list[str]:
        return [line for line in snapshot(dsn) if not line.startswith(("member ", "configuration "))
                and "plain_install" not in line]

    assert difference(objects(plain), objects(extension)) == []
