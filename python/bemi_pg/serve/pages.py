"""The pages: each reads its URL, runs a few queries (bemi_pg.serve.queries) in one transaction
with the viewer's privileges, and renders a template. Every page's URL says all it shows, so
it can be shared."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from bemi_pg.serve import queries
from bemi_pg.serve.web import BadRequest, Forbidden, Who, state_of
from bemi_pg.serve.render import url

TAIL_POLL_SECONDS = 1.0
TAIL_STREAM_SECONDS = 300  # then the browser reconnects (EventSource), from the last id it saw
KEEP_ALIVE_SECONDS = 15


def text(request: Request, name: str) -> str:
    return request.query_params.get(name, "").strip()


def number(value: str | None, name: str) -> int | None:
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, not {value!r}") from None


def context_pairs(request: Request) -> list[tuple[str, str]]:
    """The key=...&value=... pairs of a URL (a key without a value is left out)."""
    keys, values = request.query_params.getlist("key"), request.query_params.getlist("value")
    return [(k.strip(), v) for k, v in zip(keys, values) if k.strip()]


def render(request: Request, who: Who, template: str, **values: Any) -> Response:
    state = state_of(request)
    return state.renderer.render(request, template, viewer=who.viewer,
                                 allow_revert=state.settings.allow_revert and who.viewer.may_write, **values)


def filters_of(request: Request) -> queries.Filters:
    operation = text(request, "operation").upper()
    if operation and operation not in queries.OPERATIONS:
        raise BadRequest(f"operation must be one of {', '.join(queries.OPERATIONS)}")
    return queries.Filters(schema=text(request, "schema"), table=text(request, "table"), key=text(request, "row"),
                           operation=operation, since=text(request, "since"), until=text(request, "until"),
                           transaction=number(text(request, "transaction"), "transaction"),
                           context=context_pairs(request))


def recent(request: Request, who: Who) -> Response:
    filters = filters_of(request)
    before, after = number(text(request, "before"), "before"), number(text(request, "after"), "after")
    with queries.transaction(who.connections, who.viewer, time_zone=text(request, "tz")) as conn:
        found = queries.recent(conn, filters, before, after)
        tables = queries.tracked(conn)
    return render(request, who, "recent.html", page=found, filters=filters, tables=tables,
                  tz=text(request, "tz"), pager=pager(request, found, before is not None or after is not None))


def pager(request: Request, found: queries.Page, paged: bool) -> dict[str, str | None]:
    """The links to the newer, newest and older pages: this page's URL with another cursor."""
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("before", "after") and v != ""]

    def link(*cursor: tuple[str, int]) -> str:
        return url(request, "/") + ("?" + urlencode(kept + list(cursor)) if kept or cursor else "")

    return {"newer": link(("after", found.newer)) if found.newer is not None else None,
            "newest": link() if paged else None,
            "older": link(("before", found.older)) if found.older is not None else None}


def change(request: Request, who: Who) -> Response:
    change_id = request.path_params["change_id"]
    with queries.transaction(who.connections, who.viewer) as conn:
        found = queries.change(conn, change_id)
    if found is None:
        raise BadRequest(f"There is no change {change_id} in the trail (or it was pruned).")
    return render(request, who, "change.html", change=found)


def table_name(request: Request) -> tuple[str, str]:
    schema, table = text(request, "schema") or "public", text(request, "table")
    if not table:
        raise BadRequest("Which table? The URL needs table= (and schema=, default public).")
    return schema, table


def row(request: Request, who: Who) -> Response:
    schema, table = table_name(request)
    key = request.query_params.get("key")
    if key is None:
        raise BadRequest("Which row? The URL needs key= (the primary key as text, a JSON array for composite keys).")
    with queries.transaction(who.connections, who.viewer) as conn:
        versions = queries.timeline(conn, schema, table, key)
    return render(request, who, "row.html", schema=schema, table=table, key=key, versions=versions)


def row_at(request: Request, who: Who) -> Response:
    schema, table = table_name(request)
    key = request.query_params.get("key") or ""
    with queries.transaction(who.connections, who.viewer, time_zone=text(request, "tz")) as conn:
        at = queries.moment(conn, text(request, "at"))
        image = queries.row_at(conn, schema, table, key, at.isoformat())
    return render(request, who, "row_at.html", schema=schema, table=table, key=key, at=at, image=image,
                  tz=text(request, "tz"))


def transaction(request: Request, who: Who) -> Response:
    xid = request.path_params["xid"]
    after = number(text(request, "after"), "after")
    with queries.transaction(who.connections, who.viewer) as conn:
        rows, more = queries.transaction_changes(conn, xid, after)
    commits = sorted({r["committed_at"] for r in rows})
    return render(request, who, "group.html", title=f"Transaction {xid}", kind="transaction", xid=xid,
                  pairs=[], groups=queries.grouped(rows), more=more, commits=commits,
                  next_url=url(request, f"/transaction/{xid}", after=more))


def context(request: Request, who: Who) -> Response:
    pairs = context_pairs(request)
    if not pairs:
        raise BadRequest("Which context? The URL needs key= and value=, e.g. ?key=request_id&value=r-42.")
    after = number(text(request, "after"), "after")
    with queries.transaction(who.connections, who.viewer) as conn:
        rows, more = queries.context_changes(conn, pairs, after)
    title = ", ".join(f"{k} = {v}" for k, v in pairs)
    keys, values = [k for k, _ in pairs], [v for _, v in pairs]
    return render(request, who, "group.html", title=f"Context {title}", kind="context", xid=None, pairs=pairs,
                  groups=queries.grouped(rows), more=more, commits=[],
                  next_url=url(request, "/context", key=keys, value=values, after=more))


def table(request: Request, who: Who) -> Response:
    schema, name = table_name(request)
    cursor = request.query_params.get("after")
    try:
        after = json.loads(cursor) if cursor else None
    except ValueError:
        raise BadRequest("after= must be the JSON of a row's key") from None
    with queries.transaction(who.connections, who.viewer, time_zone=text(request, "tz")) as conn:
        if not any(t["schema"] == schema and t["table"] == name for t in queries.tracked(conn)):
            raise BadRequest(f"{schema}.{name} is not a tracked table, so it has no history.")
        at = queries.moment(conn, text(request, "at"))
        found = queries.table_at(conn, schema, name, at, after if isinstance(after, dict) else None)
    return render(request, who, "table.html", schema=schema, table=name, at=at, found=found, tz=text(request, "tz"),
                  next_url=url(request, "/table", schema=schema, table=name, at=at.isoformat(),
                               after=json.dumps(found.next_key) if found.next_key else None))


def tail(request: Request, who: Who) -> Response:
    with queries.transaction(who.connections, who.viewer) as conn:
        found = queries.recent(conn, queries.Filters())
    last = found.changes[0]["id"] if found.changes else 0
    return render(request, who, "tail.html", page=found, last=last)


async def tail_events(request: Request) -> Response:
    """Server-sent events: each change stored after the id given (or the browser's
    Last-Event-ID), as a table row, polling the trail by id. Ends after a while; the browser
    then reconnects from the last id it saw."""
    state = state_of(request)
    who = state.who(request)
    if who is None:
        return Response("sign in first", status_code=401)
    try:
        start = number(request.headers.get("last-event-id") or text(request, "after"), "after")
    except BadRequest as error:
        return Response(str(error), status_code=400)

    def poll(after: int | None) -> tuple[int, list[str]]:
        with queries.transaction(who.connections, who.viewer) as conn:
            if after is None:
                return queries.newest_id(conn), []
            rows = queries.tail(conn, after)
        html = [state.renderer.fragment(request, "tail_row.html", change=r) for r in rows]
        return (rows[-1]["id"] if rows else after), html

    async def events() -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        ends, quiet = loop.time() + TAIL_STREAM_SECONDS, loop.time()
        last = start
        yield "retry: 2000\n\n"
        while loop.time() < ends:
            if state.who(request) is None:
                yield "event: signed-out\ndata: \n\n"
                return
            newest, rows = await run_in_threadpool(poll, last)
            for html in rows:
                yield "event: change\n" + "".join(f"data: {line}\n" for line in html.splitlines()) + "\n"
            if rows or last is None:
                yield f"id: {newest}\n\n"
                quiet = loop.time()
            elif loop.time() - quiet > KEEP_ALIVE_SECONDS:
                yield ": still here\n\n"
                quiet = loop.time()
            last = newest
            await asyncio.sleep(TAIL_POLL_SECONDS)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


def selection_of(params: Any) -> queries.Selection:
    """Which changes to revert, from the preview's URL or the confirmation's form."""
    change_ids = tuple(i for i in (number(str(v), "change") for v in params.getlist("change")) if i is not None)
    xid = number(params.get("transaction"), "transaction")
    keys, values = params.getlist("key"), params.getlist("value")
    pairs = tuple((str(k).strip(), str(v)) for k, v in zip(keys, values) if str(k).strip())
    if sum(bool(x) for x in (change_ids, xid is not None, pairs)) != 1:
        raise BadRequest("Revert what? Give change=ID (repeated), transaction=ID, or key= and value= of a context.")
    return queries.Selection(change_ids=change_ids, transaction=xid, context=pairs,
                             through=number(params.get("through"), "through"))


def revert_allowed(request: Request, who: Who) -> None:
    if not state_of(request).settings.allow_revert:
        raise Forbidden("Reverting is off. Start the server with bemi-pg serve --allow-revert to revert from the page.")
    if not who.viewer.may_write:
        raise Forbidden("Token viewers can only read. Sign in with your database role to revert.")


def revert_preview(request: Request, who: Who) -> Response:
    revert_allowed(request, who)
    selection = selection_of(request.query_params)
    # The plan locks the rows it reads: a transaction that may write, rolled back.
    with queries.transaction(who.connections, who.viewer, read_only=False, rolled_back=True) as conn:
        ids = queries.selected_ids(conn, selection)
        if not ids:
            raise BadRequest("No changes to revert were found.")
        planned = queries.preview(conn, ids)
    return render(request, who, "revert.html", selection=selection, ids=ids, through=max(ids), planned=planned,
                  conflicts=sum(p.conflict for p in planned))


def revert_confirm(request: Request, who: Who) -> Response:
    """Performs what the preview showed (the same selection, up to its newest id), in one
    transaction, as the signed-in role; the form's CSRF token was checked by app.page."""
    revert_allowed(request, who)
    form = request.state.form
    on_conflict = str(form.get("on_conflict") or "error")
    if on_conflict not in ("error", "skip", "overwrite"):
        raise BadRequest("on_conflict must be error, skip or overwrite")
    selection = selection_of(form)
    with queries.transaction(who.connections, who.viewer, read_only=False) as conn:
        ids = queries.selected_ids(conn, selection)
        if not ids:
            raise BadRequest("No changes to revert were found.")
        done = queries.revert(conn, ids, on_conflict, {"bemi_serve": {"role": who.viewer.name}})
    return render(request, who, "reverted.html", done=done, ids=ids, on_conflict=on_conflict)
