"""Who may see what: every page asks for a sign-in; signing in proves a password; a token
viewer only reads; forms carry a CSRF token; every value, context and table name is escaped;
revert is off unless asked for; the database's privileges decide, per role."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import psycopg
import pytest

from tests.serve.conftest import HOSTILE, HOSTILE_TABLE, READER, WRITER, Client, Person, csrf_of, sign_in
from tests.helpers.trail import changes

PAGES = ["/", "/change/1", "/row?table=todo&key=1", "/row/at?table=todo&key=1", "/transaction/1",
         "/context?key=user_id&value=7", "/table?table=todo", "/tail", "/revert?change=1"]


def test_every_page_needs_a_sign_in(client: Client, seeded: dict[str, int]) -> None:
    tc = client()
    for path in PAGES:
        page = tc.get(path)
        assert page.status_code == 303, path
        assert page.headers["location"].startswith("/signin?next="), path
    assert tc.get("/tail/events", headers={"accept": "text/event-stream"}).status_code == 401
    assert tc.post("/revert", data={"change": "1"}).status_code == 303
    assert tc.get("/", headers={"authorization": "Bearer wrong"}).status_code == 303


def test_sign_in_with_a_role_and_its_password(client: Client, person: Person, seeded: dict[str, int]) -> None:
    role = person(*READER)
    tc = client()
    assert sign_in(tc, role, "wrong password").status_code == 400
    assert tc.get("/").status_code == 303
    refused = sign_in(tc, role, "")
    assert refused.status_code == 400 and "Enter a role and its password" in refused.text
    signed = sign_in(tc, role)
    assert signed.status_code == 303 and signed.headers["location"] == "/"
    page = tc.get("/")
    assert page.status_code == 200 and f"Signed in as <strong>{role}</strong>" in page.text
    tc.post("/signout", data={"csrf": csrf_of(page.text)})
    assert tc.get("/").status_code == 303


def test_a_sign_in_the_server_did_not_check_is_refused(client: Client, dsn: str, seeded: dict[str, int]) -> None:
    """The test server trusts the superuser without a password: that proves nothing."""
    user = psycopg.conninfo.conninfo_to_dict(dsn)["user"]
    refused = sign_in(client(), str(user), "anything")
    assert refused.status_code == 400
    assert "without checking its password" in refused.text


def test_the_session_cookie_holds_no_password(client: Client, person: Person, seeded: dict[str, int]) -> None:
    tc = client()
    sign_in(tc, person(*READER))
    cookie = tc.cookies["bemi_serve"]
    decoded = base64.b64decode(cookie.split(".")[0] + "==").decode()
    assert "horse" not in decoded and set(json.loads(decoded)) == {"csrf", "sid"}


def test_sign_in_needs_the_forms_csrf_token(client: Client, person: Person, seeded: dict[str, int]) -> None:
    role = person(*READER)
    tc = client()
    tc.get("/signin")
    refused = tc.post("/signin", data={"role": role, "password": "correct horse battery staple", "csrf": "forged"})
    assert refused.status_code == 400 and "This form has expired" in refused.text
    assert tc.get("/").status_code == 303


def test_token_viewing_reads_only(client: Client, person: Person, seeded: dict[str, int],
                                  admin: psycopg.Connection[Any]) -> None:
    reader = person(*READER)
    tc = client(token="s3cret-token", token_role=reader, allow_revert=True)
    assert tc.get("/signin", params={"token": "not-it"}).status_code == 200
    assert tc.get("/").status_code == 303
    assert tc.get("/signin", params={"token": "s3cret-token"}).status_code == 303
    page = tc.get("/")
    assert page.status_code == 200 and "token viewer" in page.text
    assert "Preview reverting" not in tc.get(f"/transaction/{seeded['import']}").text
    refused = tc.get("/revert", params={"transaction": seeded["import"]})
    assert refused.status_code == 403 and "Token viewers can only read" in refused.text
    # A bearer header works without a cookie (for scripts and the bench).
    assert client(token="s3cret-token", token_role=reader).get(
        "/", headers={"authorization": "Bearer s3cret-token"}).status_code == 200


def test_token_viewing_as_a_superuser_is_refused(dsn: str) -> None:
    from bemi_pg.serve import Refused, Settings, create_app

    with pytest.raises(Refused, match="superuser"):
        create_app(Settings(dsn=dsn, token="t"))


def test_a_token_viewer_runs_as_the_token_role(client: Client, person: Person, seeded: dict[str, int]) -> None:
    """--token-role without SELECT on bemi.changes: the token viewer gets an error page."""
    nobody = person()
    tc = client(token="tok", token_role=nobody)
    page = tc.get("/", headers={"authorization": "Bearer tok"})
    assert page.status_code == 403 and "permission denied for table changes" in page.text


def test_a_role_that_may_not_read_sees_an_error_page_not_data(client: Client, person: Person, seeded: dict[str, int],
                                                              admin: psycopg.Connection[Any]) -> None:
    tc = client(allow_revert=True)
    sign_in(tc, person())  # no grants at all
    for path in ["/", "/change/1", "/row?table=todo&key=1", f"/transaction/{seeded['create']}",
                 "/context?key=user_id&value=7", "/tail"]:
        page = tc.get(path)
        assert page.status_code == 403, path
        assert "permission denied" in page.text and "Sleep" not in page.text, path
    # Reads the trail but not the table: its time travel is refused by the table's privileges.
    trail_only = client()
    sign_in(trail_only, person("GRANT SELECT ON bemi.changes TO {role}"))
    assert len(re.findall(r'aria-label="change \d+"', trail_only.get("/").text)) == len(changes(admin))
    assert trail_only.get("/table?table=todo").status_code == 403


def test_every_value_context_and_table_name_is_escaped(client: Client, person: Person, seeded: dict[str, int],
                                                      admin: psycopg.Connection[Any]) -> None:
    tc = client(allow_revert=True)
    sign_in(tc, person(*WRITER))
    hostile = [c for c in changes(admin, "id", "table", "transaction_id") if c["table"] == HOSTILE_TABLE][0]
    pages = [tc.get(path, params=params) for path, params in [
        ("/", {}), ("/", {"table": HOSTILE_TABLE}), (f"/change/{hostile['id']}", {}),
        ("/row", {"table": HOSTILE_TABLE, "key": "1"}), ("/row/at", {"table": HOSTILE_TABLE, "key": "1"}),
        (f"/transaction/{hostile['transaction_id']}", {}), ("/context", {"key": HOSTILE, "value": HOSTILE}),
        ("/table", {"table": HOSTILE_TABLE}), ("/tail", {}), ("/revert", {"change": hostile["id"]}),
        ("/", {"key": HOSTILE, "value": HOSTILE, "schema": HOSTILE, "row": HOSTILE}),
        ("/row", {"table": HOSTILE, "schema": HOSTILE, "key": HOSTILE})]]
    for page in pages:
        assert page.status_code == 200, (page.url, re.findall(r"<p>.*</p>", page.text))
        html = page.text
        assert "<script>" not in html and "<img" not in html, page.url
        assert "\x1b" not in html and "\x07" not in html, page.url
    shown = pages[2].text
    assert "&lt;script&gt;alert(\\&#34;x\\&#34;)&lt;/script&gt;&#39;\\u001b[31m\\u0007" in shown  # a JSON value
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&#39;\\x1b[31m\\x07" in shown  # a context key as text
    assert "&lt;img src=x onerror=alert(1)&gt;&#34;t&#39;" in shown  # the table's name
    # An error page escapes what it repeats back.
    error = tc.get("/", params={"since": "<script>x</script>"})
    assert error.status_code == 400 and "<script>x" not in error.text


def test_the_pages_forbid_framing_and_foreign_scripts(client: Client, person: Person, seeded: dict[str, int]) -> None:
    tc = client()
    sign_in(tc, person(*READER))
    headers = tc.get("/").headers
    assert "script-src" not in headers["content-security-policy"]  # default-src 'self' covers scripts
    assert "default-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert "httponly" in tc.get("/signin").headers.get("set-cookie", "httponly").lower()


def test_revert_is_off_by_default(client: Client, person: Person, seeded: dict[str, int],
                                  admin: psycopg.Connection[Any]) -> None:
    tc = client()
    sign_in(tc, person(*WRITER))
    assert "Preview reverting" not in tc.get(f"/transaction/{seeded['import']}").text
    preview = tc.get("/revert", params={"transaction": seeded["import"]})
    assert preview.status_code == 403 and "--allow-revert" in preview.text
    csrf = csrf_of(tc.get("/").text)
    done = tc.post("/revert", data={"csrf": csrf, "transaction": seeded["import"], "on_conflict": "error"})
    assert done.status_code == 403
    assert admin.execute("SELECT id, task FROM todo ORDER BY id").fetchall() == [
        {"id": 1, "task": "Sleep (imported)"}, {"id": 3, "task": "Repeat (imported)"}]


def test_the_revert_form_needs_its_csrf_token(client: Client, person: Person, seeded: dict[str, int],
                                              admin: psycopg.Connection[Any]) -> None:
    tc = client(allow_revert=True)
    sign_in(tc, person(*WRITER))
    for csrf in ("", "forged"):
        done = tc.post("/revert", data={"csrf": csrf, "transaction": seeded["import"], "on_conflict": "error"})
        assert done.status_code == 403 and "did not come from this page" in done.text
    assert len(admin.execute("SELECT id FROM todo").fetchall()) == 2
    assert re.search(r"DELETE", str(changes(admin, "operation")[-1]))


def test_a_new_token_signs_out_the_old_ones_viewers(client: Client, person: Person, seeded: dict[str, int]) -> None:
    reader = person(*READER)
    old = client(token="old-token", token_role=reader, secret_key="kept across restarts")
    assert old.get("/signin", params={"token": "old-token"}).status_code == 303
    assert "old-token" not in old.cookies["bemi_serve"]
    new = client(token="new-token", token_role=reader, secret_key="kept across restarts")
    new.cookies.set("bemi_serve", old.cookies["bemi_serve"])
    assert old.get("/").status_code == 200
    assert new.get("/").status_code == 303
