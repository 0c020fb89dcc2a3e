"""sql/src/ is the one current definition: the committed standalone script is what it builds."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
CONTROL = (ROOT / "bemi.control").read_text(encoding="utf-8")
VERSION = re.findall(r"^default_version = '(.*)'", CONTROL, re.M)[0]
BUILT = ROOT / "sql" / f"bemi--{VERSION}.sql"


def test_the_committed_script_is_what_sql_src_builds(tmp_path: Path) -> None:
    assert shutil.which("make") is not None, "make builds sql/bemi--1.2.sql: install it"
    target = tmp_path / BUILT.name
    # The Makefile's own rule, run with the output elsewhere: the checkout may be read-only.
    subprocess.run(["make", "-s", "-C", str(ROOT), f"SQL_BUILT={target}", str(target)], check=True,
                   capture_output=True, text=True)
    assert target.read_text(encoding="utf-8") == BUILT.read_text(encoding="utf-8"), (
        f"sql/{BUILT.name} differs from what sql/src/ builds: run make sql/{BUILT.name} and commit it")


def test_each_source_file_says_what_it_holds_and_defines_each_object_once() -> None:
    sources = sorted((ROOT / "sql" / "src").glob("*.sql"))
    assert sources[0].read_text().startswith('\\echo Use "CREATE EXTENSION bemi" to load this file. \\quit\n')
    defined: list[str] = []
    for source in sources:
        text = source.read_text(encoding="utf-8")
        assert re.search(r"^--.*(Holds:|00_header)", text, re.M), source.name
        # Plain CREATE, in the final form: no OR REPLACE, no patches of a function made before.
        assert not re.search(r"\bOR REPLACE\b|pg_get_functiondef", text), source.name
        defined += re.findall(r"^CREATE (?:UNLOGGED )?(?:FUNCTION|TABLE|VIEW|TYPE|INDEX) (\S+?)[ (]", text, re.M)
    assert len(defined) == len(set(defined)), sorted({d for d in defined if defined.count(d) > 1})
