"""pg_dump and pg_restore keep the trail: every way to 1.2, every dump form, restored into a new
database, with no error and every stored change as it was; a new slot then captures again."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
import pytest
from tests.fixtures.database import BINDIR, NewDatabase
from tests.helpers.installs import PENDING, STORED, WAYS, catch_up, trail
from tests.helpers.trail import ingest

# Whole database, and the trail's schema alone (with the extension that makes its tables).
FORMS = {
    "plain": ["--format=plain"],
    "custom": ["--format=custom"],
    "plain schema": ["--format=plain", "--schema=bemi", "--extension=bemi"],
    "custom schema": ["--format=custom", "--schema=bemi", "--extension=bemi"],
}


def dump_and_restore(source: str, target: str, form: str, tmp_path: Path, extension: bool = True) -> None:
    """Dumps source in the form, restores it into target; any error fails. A plain install is
    no extension: its schema holds everything."""
    path = tmp_path / "dump"
    options = [o for o in FORMS[form] if extension or not o.startswith("--extension")]
    subprocess.run([os.path.join(BINDIR, "pg_dump"), *options, "--file", str(path), "--dbname", source],
                   check=True, capture_output=True, text=True)
    if form.startswith("plain"):
        restore = [os.path.join(BINDIR, "psql"), "--no-psqlrc", "--quiet", "--set", "ON_ERROR_STOP=1",
                   "--file", str(path), "--dbname", target]
    else:
        restore = [os.path.join(BINDIR, "pg_restore"), "--exit-on-error", "--dbname", target, str(path)]
    done = subprocess.run(restore, capture_output=True, text=True)
    assert done.returncode == 0 and "ERROR" not in done.stderr, done.stderr


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("way", ["fresh", "from 1.0", "from 1.1", "plain"])
def test_a_restore_has_the_whole_trail(new_database: NewDatabase, way: str, form: str, tmp_path: Path) -> None:
    how, as_owner = WAYS[way]
    source = new_database(as_owner=as_owner)
    how(source)
    catch_up(source)
    stored = trail(source)
    assert len(stored) == STORED + PENDING
    restored = new_database()
    dump_and_restore(source, restored, form, tmp_path, extension=way != "plain")
    assert trail(restored) == stored
    # The slot is not in a dump: a new one captures from here on, into the restored trail.
    with psycopg.connect(restored, autocommit=True) as admin:
        admin.execute("SELECT bemi.create_slot()")
        if not form.endswith("schema"):
            admin.execute("INSERT INTO todo (task) VALUES ('after the restore')")
            assert ingest(admin) == 1


def test_pg_dump_of_the_schema_alone_works_after_an_update_from_1_0(new_database: NewDatabase) -> None:
    """1.1 made the partitions of a 1.0 trail inside the update script, as members and
    configuration tables of the extension, and pg_dump --schema crashed on them."""
    source = new_database()
    WAYS["from 1.0"][0](source)
    done = subprocess.run([os.path.join(BINDIR, "pg_dump"), "--schema=bemi", "--dbname", source],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "COPY bemi.changes_" in done.stdout
