"""bemi-pg serve in a real browser: Playwright drives Debian's Chromium (headless, no browser
download) against the app on real uvicorn, the way a person would: sign in, filter, open a
row's timeline, a change's diff, its transaction, preview the revert and confirm it; then the
live tail. Asserts on the pages and on the tables and bemi.changes after the revert.

A screenshot of each page is taken; with BEMI_SERVE_SCREENSHOTS=docs/serve they are written
there (the pictures of docs/serve.md)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.helpers.trail import changes, ingest
from tests.serve.conftest import PASSWORD, WRITER, Person

CHROMIUM = "/usr/bin/chromium"
# The machine has no network: nothing may try to reach one.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.slow


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def shoot(tmp_path: Path) -> Iterator[Callable[[Page, str], None]]:
    """Takes a full-page screenshot; copies them to BEMI_SERVE_SCREENSHOTS at the end."""
    taken: list[Path] = []

    def take(page: Page, name: str) -> None:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 5000  # a picture, not an empty page
        taken.append(path)

    yield take
    if target := os.environ.get("BEMI_SERVE_SCREENSHOTS"):
        Path(target).mkdir(parents=True, exist_ok=True)
        for path in taken:
            shutil.copy(path, Path(target) / path.name)


def test_click_through_to_a_revert(browser: Browser, served: Callable[..., str], person: Person,
                                   seeded: dict[str, int], admin: psycopg.Connection[Any],
                                   shoot: Callable[[Page, str], None]) -> None:
    writer = person(*WRITER, name="support_anna")
    base = served(allow_revert=True)
    context = browser.new_context(viewport={"width": 1280, "height": 800}, timezone_id="Europe/Paris")
    page = context.new_page()

    # Every page asks for a sign-in first; the skip link is the first stop of the keyboard.
    page.goto(base + "/?table=todo")
    expect(page.get_by_role("heading", name="Sign in to the trail")).to_be_visible()
    shoot(page, "signin")
    page.get_by_label("Role").fill(writer)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Skip to content")

    # Filters: the todo table's changes by user 9 (the import), newest first.
    expect(page.get_by_role("heading", name="Recent changes")).to_be_visible()
    page.get_by_label("Context key").fill("user_id")
    page.get_by_label("Context value").fill("9")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.changes tbody tr")
    expect(rows).to_have_count(3)
    imported = [c for c in changes(admin, "id", "transaction_id") if c["transaction_id"] == seeded["import"]]
    expect(rows.first.locator("td").first).to_have_text(str(imported[-1]["id"]))
    assert page.url.endswith("/?table=todo&key=user_id&value=9&tz=Europe%2FParis")  # a URL to share
    first_time = page.locator("time").first
    expect(first_time).not_to_contain_text("UTC")  # shown in the viewer's time zone
    page.get_by_role("button", name="Filter").focus()
    page.goto(base + "/")
    shoot(page, "recent")

    # A row's timeline: row 2 became 20, then was deleted by the import.
    page.goto(base + "/?table=todo&key=user_id&value=9")
    page.get_by_role("link", name="timeline of todo 20").click()
    expect(page.get_by_role("heading", name=re.compile("Timeline of public.todo"))).to_be_visible()
    expect(page.locator("ol.timeline > li")).to_have_count(3)
    expect(page.get_by_text("The key changed from 2 to 20.")).to_be_visible()
    shoot(page, "timeline")

    # The move's diff, on its change page.
    page.locator("ol.timeline > li").nth(1).get_by_role("link", name=re.compile(r"change \d+")).click()
    diff = page.locator("table.diff")
    expect(diff.locator("tr", has_text="task").locator("td.old")).to_have_text('"Eat"')
    expect(diff.locator("tr", has_text="task").locator("td.new")).to_have_text('"Eat more"')
    shoot(page, "change")

    # "As it was at" the move.
    page.go_back()
    page.locator("ol.timeline > li").nth(1).get_by_role("link", name=re.compile("As it was at")).click()
    expect(page.locator("table.values tr", has_text="task").locator("td")).to_have_text('"Eat more"')
    shoot(page, "row-at")

    # The import's transaction, grouped by table.
    page.goto(base + f"/transaction/{seeded['import']}")
    expect(page.get_by_role("heading", name=f"Transaction {seeded['import']}")).to_be_visible()
    expect(page.get_by_role("heading", name="public.todo: 3 changes")).to_be_visible()
    shoot(page, "transaction")

    # Its revert: the preview shows the values each row gets and writes nothing.
    before = admin.execute("SELECT id, task, done FROM todo ORDER BY id").fetchall()
    page.get_by_role("link", name=re.compile("Preview reverting this transaction")).click()
    expect(page.get_by_role("heading", name="Preview: revert 3 changes")).to_be_visible()
    expect(page.locator("table.plan")).to_contain_text("inserted")
    expect(page.locator("table.plan ins", has_text='"Sleep"')).to_be_visible()
    shoot(page, "revert-preview")
    assert admin.execute("SELECT id, task, done FROM todo ORDER BY id").fetchall() == before

    page.get_by_label("Stop and change nothing if any row changed since").check()
    page.get_by_role("button", name=f"Revert as {writer}").click()
    expect(page.get_by_role("heading", name="Reverted")).to_be_visible()
    shoot(page, "reverted")
    assert admin.execute("SELECT id, task, done FROM todo ORDER BY id").fetchall() == [
        {"id": 1, "task": "Sleep", "done": True}, {"id": 3, "task": "Repeat", "done": False},
        {"id": 20, "task": "Eat more", "done": False}]
    count = len(changes(admin))
    ingest(admin)
    reverts = changes(admin)[count:]
    assert sorted(c["operation"] for c in reverts) == ["CREATE", "UPDATE", "UPDATE"]
    assert all(c["context"]["bemi_serve"] == {"role": writer} for c in reverts)

    # The table as it is now, after the revert.
    page.goto(base + "/table?table=todo")
    expect(page.locator("table.values tbody tr")).to_have_count(3)
    shoot(page, "table-at")

    # The live tail: a change stored while the page is open appears at the top.
    page.goto(base + "/tail")
    expect(page.locator("#tail-status")).to_have_text("Watching for new changes.")
    with admin.transaction():
        admin.execute("SELECT bemi.set_context('{\"user_id\": 42, \"endpoint\": \"/todo\"}')")
        admin.execute("INSERT INTO todo VALUES (5, 'Watch the tail')")
    ingest(admin)
    newest = changes(admin, "id")[-1]["id"]
    expect(page.locator("#tail tr").first.locator("td").first).to_have_text(str(newest), timeout=15000)
    expect(page.locator("#tail-status")).to_have_text(f"Change {newest} stored.")
    shoot(page, "tail")
    context.close()


def test_read_only_pages_work_without_javascript(browser: Browser, served: Callable[..., str], person: Person,
                                                 seeded: dict[str, int]) -> None:
    reader = person(*WRITER)
    base = served()
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(base + "/signin")
    page.get_by_label("Role").fill(reader)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_label("Operation").select_option("DELETE")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("table.changes tbody tr")).to_have_count(1)
    page.get_by_role("link", name="timeline of todo 20").click()
    expect(page.locator("ol.timeline > li")).to_have_count(3)
    expect(page.locator("time").first).to_contain_text("UTC")
    assert page.get_by_role("link", name=re.compile("Preview reverting")).count() == 0  # revert is off
    context.close()
