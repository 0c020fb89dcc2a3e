"""The read-only pages through Starlette's TestClient, signed in with a role that may read the
trail and the tables: what each shows, filters, paging, following a key move, time travel, the
live tail's events. Each asserts on what the trail and the tables hold."""

from __future__ import annotations

import re
from typing import Any

import psycopg

from tests.serve.conftest import READER, Client, Person, sign_in
from tests.helpers.trail import changes


def change_ids(html: str) -> list[int]:
    """The change ids a page lists, in order (the first column of each change row)."""
    return [int(i) for i in re.findall(r'aria-label="change (\d+)"', html)]


def reader(client: Client, person: Person, **settings: Any) -> Any:
    tc = client(**settings)
    assert sign_in(tc, person(*READER)).status_code == 303
    return tc


def test_recent_changes_newest_first_with_filters(client: Client, person: Person, seeded: dict[str, int],
                                                  admin: psycopg.Connection[Any]) -> None:
    tc = reader(client, person)
    every = [c["id"] for c in changes(admin, "id")]
    page = tc.get("/")
    assert page.status_code == 200
    assert change_ids(page.text) == every[::-1]
    todo = [c["id"] for c in changes(admin, "id", "table") if c["table"] == "todo"]
    assert change_ids(tc.get("/", params={"table": "todo"}).text) == todo[::-1]
    deletes = [c["id"] for c in changes(admin, "id", "operation") if c["operation"] == "DELETE"]
    assert change_ids(tc.get("/", params={"operation": "DELETE"}).text) == deletes[::-1]
    by_user = [c["id"] for c in changes(admin, "id", "context") if c["context"].get("user_id") == 7]
    assert len(by_user) == 4
    assert change_ids(tc.get("/", params={"key": "user_id", "value": "7"}).text) == by_user[::-1]
    in_import = [c["id"] for c in changes(admin, "id", "transaction_id") if c["transaction_id"] == seeded["import"]]
    assert change_ids(tc.get("/", params={"transaction": seeded["import"]}).text) == in_import[::-1]
    assert change_ids(tc.get("/", params={"table": "todo", "row": "1"}).text) == [
        c["id"] for c in changes(admin, "id", "table", "primary_key")[::-1] if c["table"] == "todo" and c["primary_key"] == "1"]
    timed = changes(admin, "id", "committed_at")
    last = timed[-1]["committed_at"]
    assert change_ids(tc.get("/", params={"since": last.isoformat()}).text) == [
        c["id"] for c in timed[::-1] if c["committed_at"] >= last]
    assert change_ids(tc.get("/", params={"until": last.isoformat()}).text) == [
        c["id"] for c in timed[::-1] if c["committed_at"] < last]
    empty = tc.get("/", params={"key": "user_id", "value": "12345"})
    assert change_ids(empty.text) == [] and "No changes match these filters" in empty.text


def test_keyset_pages(client: Client, person: Person, seeded: dict[str, int], admin: psycopg.Connection[Any],
                      monkeypatch: Any) -> None:
    from bemi_pg.serve import queries
    monkeypatch.setattr(queries, "PAGE", 3)
    tc = reader(client, person)
    every = [c["id"] for c in changes(admin, "id")][::-1]
    first = tc.get("/")
    assert change_ids(first.text) == every[:3]
    older = re.search(r'href="([^"]+)" rel="next"', first.text)
    assert older is not None
    second = tc.get(older.group(1).replace("&amp;", "&"))
    assert change_ids(second.text) == every[3:6]
    newer = re.search(r'href="([^"]+)" rel="prev"', second.text)
    assert newer is not None
    assert change_ids(tc.get(newer.group(1).replace("&amp;", "&")).text) == every[:3]


def test_row_timeline_follows_a_key_move(client: Client, person: Person, seeded: dict[str, int],
                                         admin: psycopg.Connection[Any]) -> None:
    """Row 2 became 20 and was then deleted: the timeline of either key shows all three versions."""
    tc = reader(client, person)
    mine = [c for c in changes(admin, "id", "table", "primary_key", "previous_key", "operation")
            if c["table"] == "todo" and "2" in (c["primary_key"], c["previous_key"]) or c["primary_key"] == "20"]
    assert [c["operation"] for c in mine] == ["CREATE", "UPDATE", "DELETE"]
    for key in ("2", "20"):
        page = tc.get("/row", params={"table": "todo", "key": key})
        assert page.status_code == 200
        assert change_ids(page.text) == [] and re.findall(r'change (\d+)</a>', page.text) == [str(c["id"]) for c in mine]
        assert "The key changed from 2 to 20." in page.text
    # The move's diff: the key and the task.
    move = tc.get("/row", params={"table": "todo", "key": "20"}).text
    assert re.search(r'<th scope="row">id</th><td class="old">2</td><td class="new">20</td>', move)
    assert re.search(r'<th scope="row">task</th><td class="old">&#34;Eat&#34;</td><td class="new">&#34;Eat more&#34;</td>', move)


def test_as_it_was_at(client: Client, person: Person, seeded: dict[str, int], admin: psycopg.Connection[Any]) -> None:
    tc = reader(client, person)
    created = [c for c in changes(admin, "table", "primary_key", "committed_at") if c["table"] == "todo"][0]
    page = tc.get("/row/at", params={"table": "todo", "key": "1", "at": created["committed_at"].isoformat()})
    assert page.status_code == 200
    assert re.search(r'<th scope="row">done</th><td>false</td>', page.text)
    now = tc.get("/row/at", params={"table": "todo", "key": "1"})
    assert re.search(r'<th scope="row">done</th><td>true</td>', now.text)
    assert "&#34;Sleep (imported)&#34;" in now.text
    table = tc.get("/table", params={"table": "todo", "at": created["committed_at"].isoformat()})
    assert table.status_code == 200
    assert [int(x) for x in re.findall(r'key=(\d+)"', table.text)] == [1, 2, 3]
    assert [int(x) for x in re.findall(r'key=(\d+)"', tc.get("/table", params={"table": "todo"}).text)] == [1, 3]
    assert tc.get("/table", params={"table": "nope"}).status_code == 400


def test_transaction_and_request_grouped_by_table(client: Client, person: Person, seeded: dict[str, int],
                                                  admin: psycopg.Connection[Any]) -> None:
    tc = reader(client, person)
    page = tc.get(f"/transaction/{seeded['import']}")
    assert page.status_code == 200
    assert "public.todo</a>: 3 changes" in page.text
    assert change_ids(page.text) == [c["id"] for c in changes(admin, "id", "transaction_id")
                                     if c["transaction_id"] == seeded["import"]]
    request = tc.get("/context", params={"key": "request_id", "value": "r-4"})
    assert "1 change</h2>" in request.text and request.text.count("<section") == 1
    user = tc.get("/context", params={"key": "user_id", "value": "7"})
    assert change_ids(user.text) == [c["id"] for c in changes(admin, "id", "context") if c["context"].get("user_id") == 7]


def test_change_page_and_errors(client: Client, person: Person, seeded: dict[str, int], admin: psycopg.Connection[Any]) -> None:
    tc = reader(client, person)
    update = [c for c in changes(admin, "id", "operation") if c["operation"] == "UPDATE"][0]
    page = tc.get(f"/change/{update['id']}")
    assert page.status_code == 200
    assert re.search(r'<th scope="row">done</th><td class="old">false</td><td class="new">true</td>', page.text)
    assert tc.get("/change/999999").status_code == 400
    assert tc.get("/", params={"operation": "DROP"}).status_code == 400
    bad_time = tc.get("/", params={"since": "yesterday-ish"})
    assert bad_time.status_code == 400 and "SQLSTATE" in bad_time.text


def test_tail_events(client: Client, person: Person, seeded: dict[str, int], admin: psycopg.Connection[Any]) -> None:
    """The tail's stream sends the changes stored after the id it is given, as rows."""
    from bemi_pg.serve import pages

    tc = reader(client, person)
    every = [c["id"] for c in changes(admin, "id")]
    assert change_ids(tc.get("/tail").text) == every[::-1]
    with tc.stream("GET", "/tail/events", params={"after": every[-3]}) as stream:
        received = ""
        for chunk in stream.iter_text():
            received += chunk
            if f"id: {every[-1]}" in received:
                break
    assert [int(i) for i in re.findall(r'aria-label="change (\d+)"', received)] == every[-2:]
    assert pages.TAIL_STREAM_SECONDS > 0
