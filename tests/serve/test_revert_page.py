"""Revert from the page: the preview (the plan, rolled back) shows what each row would get and
the conflicts, and writes nothing; the confirmation reverts what was previewed, with the
signed-in role's privileges, and the revert is itself in the trail."""

from __future__ import annotations

import re
from typing import Any

import psycopg

from tests.helpers.trail import changes, ingest
from tests.serve.conftest import READER, WRITER, Client, Person, csrf_of, sign_in


def todo(admin: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return admin.execute("SELECT id, task, done FROM todo ORDER BY id").fetchall()


def confirm(tc: Any, preview: Any, on_conflict: str) -> Any:
    """Sends the preview's confirmation form as a browser would: its hidden fields and a choice."""
    form = re.search(r'<form method="post" action="/revert".*?</form>', preview.text, re.S)
    assert form is not None
    fields = [(name, value.replace("&#34;", '"').replace("&amp;", "&")) for name, value in
              re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', form.group(0))]
    data: dict[str, list[str]] = {"on_conflict": [on_conflict]}
    for name, value in fields:
        data.setdefault(name, []).append(value)
    return tc.post("/revert", data=data)


def test_preview_then_confirm_a_transaction(client: Client, person: Person, seeded: dict[str, int],
                                            admin: psycopg.Connection[Any]) -> None:
    writer = person(*WRITER)
    tc = client(allow_revert=True)
    sign_in(tc, writer)
    before = todo(admin)
    trail_before = len(changes(admin))
    preview = tc.get("/revert", params={"transaction": seeded["import"]})
    assert preview.status_code == 200
    assert "Preview: revert 3 changes" in preview.text
    # Rows 1 and 3 get their task back, row 20 (deleted) comes back.
    assert re.search(r"<del>&#34;Sleep \(imported\)&#34;</del> → <ins>&#34;Sleep&#34;</ins>", preview.text)
    assert re.search(r"<del>&#34;Repeat \(imported\)&#34;</del> → <ins>&#34;Repeat&#34;</ins>", preview.text)
    assert ">20</a></td>\n  <td>inserted</td>" in preview.text
    assert todo(admin) == before  # the preview wrote nothing
    ingest(admin)
    assert len(changes(admin)) == trail_before

    done = confirm(tc, preview, "error")
    assert done.status_code == 200, done.text
    assert sorted(re.findall(r"<td>(inserted|updated|deleted|skipped|unchanged)</td>", done.text)) == [
        "inserted", "updated", "updated"]
    assert todo(admin) == [{"id": 1, "task": "Sleep", "done": True}, {"id": 3, "task": "Repeat", "done": False},
                           {"id": 20, "task": "Eat more", "done": False}]
    ingest(admin)
    reverts = changes(admin)[trail_before:]
    assert len(reverts) == 3
    ids = sorted(c["id"] for c in changes(admin) if c["transaction_id"] == seeded["import"])
    for c in reverts:
        assert c["context"] == {"bemi_serve": {"role": writer}, "bemi_revert": {"change_ids": ids}}


def test_conflicts_are_shown_and_skipped_or_overwritten(client: Client, person: Person, seeded: dict[str, int],
                                                        admin: psycopg.Connection[Any]) -> None:
    """Row 1 changed after the import: the preview names the conflict; skip leaves it alone."""
    admin.execute("UPDATE todo SET task = 'Nap' WHERE id = 1")
    ingest(admin)
    tc = client(allow_revert=True)
    sign_in(tc, person(*WRITER))
    preview = tc.get("/revert", params={"transaction": seeded["import"]})
    assert "1 row changed since these changes" in preview.text
    assert preview.text.count('class="conflict"') == 1
    assert re.search(r'<tr class="conflict">\s*<td>public.todo</td>\s*<td><a [^>]*>1</a>', preview.text)
    refused = confirm(tc, preview, "error")
    assert refused.status_code == 409 and "rows changed since, nothing was reverted" in refused.text
    assert [r["task"] for r in todo(admin)] == ["Nap", "Repeat (imported)"]
    assert confirm(tc, preview, "skip").status_code == 200
    assert todo(admin) == [{"id": 1, "task": "Nap", "done": True}, {"id": 3, "task": "Repeat", "done": False},
                           {"id": 20, "task": "Eat more", "done": False}]


def test_a_request_and_one_change(client: Client, person: Person, seeded: dict[str, int],
                                  admin: psycopg.Connection[Any]) -> None:
    tc = client(allow_revert=True)
    sign_in(tc, person(*WRITER))
    page = tc.get("/context", params={"key": "request_id", "value": "r-2"})
    link = re.search(r'href="(/revert\?[^"]+)"', page.text)
    assert link is not None
    preview = tc.get(link.group(1).replace("&amp;", "&"))
    assert "Preview: revert 1 change" in preview.text
    assert confirm(tc, preview, "overwrite").status_code == 200
    assert todo(admin)[0] == {"id": 1, "task": "Sleep", "done": False}  # overwrite: the whole row as before
    move = [c for c in changes(admin, "id", "previous_key") if c["previous_key"] == "2"][0]
    change_page = tc.get(f"/change/{move['id']}")
    preview = tc.get(re.search(r'href="(/revert\?change=\d+)"', change_page.text).group(1))  # type: ignore[union-attr]
    assert preview.status_code == 200 and "Preview: revert 1 change" in preview.text


def test_the_revert_runs_with_the_signed_in_roles_privileges(client: Client, person: Person, seeded: dict[str, int],
                                                             admin: psycopg.Connection[Any]) -> None:
    """A role that may read but not write: the database refuses already the preview (the plan
    locks the rows it would write, which takes UPDATE), and a confirmation sent anyway; nothing
    changes."""
    tc = client(allow_revert=True)
    sign_in(tc, person(*READER))
    before = todo(admin)
    preview = tc.get("/revert", params={"transaction": seeded["import"]})
    assert preview.status_code == 403 and "permission denied for table todo" in preview.text
    done = tc.post("/revert", data={"csrf": csrf_of(preview.text), "transaction": str(seeded["import"]),
                                    "on_conflict": "overwrite"})
    assert done.status_code == 403 and "permission denied for table todo" in done.text
    assert todo(admin) == before


def test_confirm_reverts_only_what_was_previewed(client: Client, person: Person, seeded: dict[str, int],
                                                 admin: psycopg.Connection[Any]) -> None:
    """A change of the same request stored after the preview is not reverted with it."""
    tc = client(allow_revert=True)
    sign_in(tc, person(*WRITER))
    preview = tc.get("/revert", params={"key": "user_id", "value": "8"})
    assert "Preview: revert 1 change" in preview.text
    with admin.transaction():
        admin.execute("SELECT bemi.set_context('{\"user_id\": 8}')")
        admin.execute("INSERT INTO todo VALUES (4, 'Late')")
    ingest(admin)
    assert confirm(tc, preview, "error").status_code == 409  # row 20 was deleted since: a conflict
    assert confirm(tc, preview, "skip").status_code == 200
    assert {"id": 4, "task": "Late", "done": False} in todo(admin)
