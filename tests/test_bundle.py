"""The SQL script shipped in the package: it parses, and its functions follow the hardening rules."""

import subprocess
from pathlib import Path

from bemi_pg import bundle

DESIGN_OBJECTS = {
    "bemi.set_context", "bemi.context", "bemi.track", "bemi.untrack", "bemi.track_all",
    "bemi.create_slot", "bemi.drop_slot", "bemi.ingest",
}


def test_script_parses_and_holds_the_designed_functions() -> None:
    names = {f.name for f in bundle.functions()}
    assert DESIGN_OBJECTS <= names
    assert any("CREATE VIEW bemi.wal" in s for s in bundle.statements())
    assert any("CREATE TABLE bemi.changes" in s for s in bundle.statements())


def test_every_security_definer_function_pins_search_path() -> None:
    definers = [f for f in bundle.functions() if f.security_definer]
    assert definers, "ingest runs as the extension owner"
    assert all("search_path" in f.settings for f in definers)


def test_installed_script_is_the_packaged_one() -> None:
    sharedir = subprocess.check_output(["pg_config", "--sharedir"], text=True).strip()
    installed = Path(sharedir, "extension", "bemi--1.0.sql").read_text(encoding="utf-8")
    assert installed == bundle.script()
