"""The SQL script shipped in the package: it parses, and its functions follow the hardening rules."""

import subprocess
from pathlib import Path

import pytest

from bemi_pg import scripts

DESIGN_OBJECTS = {
    "bemi.set_context", "bemi.context", "bemi.track", "bemi.untrack", "bemi.track_all",
    "bemi.create_slot", "bemi.drop_slot", "bemi.ingest",
}


def test_script_parses_and_holds_the_designed_functions() -> None:
    names = {f.name for f in scripts.functions()}
    assert DESIGN_OBJECTS <= names
    assert any("CREATE VIEW bemi.wal" in s for s in scripts.statements())
    assert any("CREATE TABLE bemi.changes" in s for s in scripts.statements())


def test_every_security_definer_function_pins_search_path() -> None:
    definers = [f for f in scripts.functions() if f.security_definer]
    assert definers, "ingest runs as the extension owner"
    assert all("search_path" in f.settings for f in definers)


def test_installed_scripts_are_the_packaged_ones() -> None:
    """make install installs every packaged script, but the standalone script of the latest
    version as the step after the gate (bemi--0--1.2.sql): CREATE EXTENSION then runs the gate's
    version check first (sql/bemi--0.sql, the Makefile)."""
    extension = Path(subprocess.check_output(["pg_config", "--sharedir"], text=True).strip(), "extension")
    latest = scripts.latest_version()
    for name in scripts.scripts():
        file = f"bemi--0--{name}.sql" if name == latest else f"bemi--{name}.sql"
        assert (extension / file).read_text(encoding="utf-8") == scripts.script(name), name
    assert not (extension / f"bemi--{latest}.sql").exists()


def test_the_package_ships_a_path_from_every_version_to_the_latest() -> None:
    assert scripts.scripts() == ["0", "1.0", "1.0--1.1", "1.2", "1.1--1.2"]
    assert scripts.updates() == {"1.0": "1.1", "1.1": "1.2"}
    assert scripts.latest_version() == "1.2"
    # A fresh install runs the standalone script of the latest version, an older one the updates.
    assert scripts.install_path() == ["1.2"]
    assert scripts.install_path(None, "1.1") == ["1.0", "1.0--1.1"]
    assert scripts.install_path(None, "1.0") == ["1.0"]
    assert scripts.install_path("1.0") == ["1.0--1.1", "1.1--1.2"]
    assert scripts.install_path("1.1") == ["1.1--1.2"]
    assert scripts.install_path("1.2") == []
    with pytest.raises(ValueError, match="no update path from bemi 1.2 to 1.0"):
        scripts.install_path("1.2", "1.0")


def test_update_scripts_parse_and_pin_search_path() -> None:
    for name in scripts.scripts():
        definers = [f for f in scripts.functions(name) if f.security_definer]
        assert all("search_path" in f.settings for f in definers), name
    names = {f.name for f in scripts.functions("1.0--1.1")}
    assert {"bemi.slot_name", "bemi.track_all", "bemi.uninstall", "bemi.track_new_tables"} <= names


def test_plain_statements_leave_out_what_only_create_extension_runs() -> None:
    for name in scripts.install_path():
        plain, original = scripts.plain_statements(name), scripts.statements(name)
        assert len(plain) == len(original) and original != plain, name
        assert not any("pg_extension_config_dump" in s or s.startswith("\\echo") or "@extschema@" in s
                       for s in plain), name
    assert "SELECT pg_catalog.num_nonnulls('bemi.changes', '')" in scripts.plain_statements("1.0")


def test_plain_statements_keep_what_a_config_dump_statement_also_does() -> None:
    sql = "SELECT pg_catalog.pg_extension_config_dump(p, '') FROM bemi.create_partitions(now(), now()) AS p"
    assert scripts.CONFIG_DUMP.sub(scripts.CONFIG_DUMP_STANDIN, sql) == (
        "SELECT pg_catalog.num_nonnulls(p, '') FROM bemi.create_partitions(now(), now()) AS p")
