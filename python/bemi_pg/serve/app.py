"""The application: its routes, signing in and out.  Mountable in any Starlette or FastAPI app:

    from bemi_pg.serve import Settings, create_app
    app.mount("/audit", create_app(Settings(dsn="host=db dbname=app", allow_revert=True)))
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg.rows import dict_row
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bemi_pg.serve import auth, pages
from bemi_pg.serve.render import HERE, url
from bemi_pg.serve.web import BadRequest, Refused, Settings, State, error_page, page, state_of


def check_token_role(settings: Settings) -> None:
    """Refuses token viewing that would read as a superuser."""
    if not settings.token:
        return
    with psycopg.connect(settings.dsn, row_factory=dict_row, application_name=auth.APPLICATION_NAME) as conn:
        row = conn.execute("SELECT r.rolname, r.rolsuper, pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER') AS may_become "
                           "FROM pg_catalog.pg_roles AS r WHERE r.rolname = coalesce(%s, current_user)",
                           [settings.token_role]).fetchone()
    if row is None:
        raise Refused(f"bemi: the role {settings.token_role} does not exist")
    if not row["may_become"]:
        raise Refused(f"bemi: the server's role cannot SET ROLE {row['rolname']}: GRANT {row['rolname']} TO the --dsn role")
    if row["rolsuper"]:
        raise Refused(f"bemi: token viewers would read as {row['rolname']}, a superuser; pass --token-role with a role "
                      "that may only read the trail (GRANT SELECT ON bemi.changes TO bemi_reader)")


def local_path(target: str | None) -> str:
    """A path inside this app to go to after signing in (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return parts.path + ("?" + parts.query if parts.query else "") if not parts.netloc and not parts.scheme else "/"


async def signin(request: Request) -> Response:
    state = state_of(request)
    request.session.setdefault("csrf", auth.new_csrf())
    target = local_path(request.query_params.get("next"))
    error = None
    if request.method == "GET" and state.token_viewer and auth.same(request.query_params.get("token"), state.settings.token):
        return signed_in(request, state, None, target)
    if request.method == "POST":
        form = await request.form()
        target = local_path(str(form.get("next") or "/"))
        if not auth.same(str(form.get("csrf") or ""), request.session.get("csrf")):
            error = "This form has expired: sign in again."
        elif form.get("token") is not None:
            if state.token_viewer and auth.same(str(form.get("token")), state.settings.token):
                return signed_in(request, state, None, target)
            error = "That token is not the one the server printed." if state.token_viewer else "Token viewing is off."
        else:
            try:
                viewer = await run_in_threadpool(auth.sign_in, state.settings.dsn, str(form.get("role") or ""),
                                                 str(form.get("password") or ""))
            except auth.SignInRefused as refused:
                error = str(refused)
            else:
                return signed_in(request, state, viewer, target)
    return state.renderer.render(request, "signin.html", status_code=400 if error else 200, error=error,
                                 next=target, token_viewing=state.token_viewer is not None)


def signed_in(request: Request, state: State, viewer: auth.Viewer | None, target: str) -> Response:
    """A new session (a new id and CSRF token: nothing set before signing in carries over)."""
    state.sessions.end(request.session.get("sid"))
    request.session.clear()
    request.session["csrf"] = auth.new_csrf()
    if viewer is None:
        request.session["token"] = auth.token_mark(state.settings.token)
    else:
        request.session["sid"] = state.sessions.start(viewer)
    return RedirectResponse(url(request, target), status_code=303)


async def signout(request: Request) -> Response:
    state = state_of(request)
    form = await request.form()
    if not auth.same(str(form.get("csrf") or ""), request.session.get("csrf")):
        return error_page(request, None, BadRequest("This form has expired: reload the page and sign out again."))
    state.sessions.end(request.session.get("sid"))
    request.session.clear()
    return RedirectResponse(url(request, "/signin"), status_code=303)


def create_app(settings: Settings) -> Starlette:
    """The web page over the trail of settings.dsn's database (raises Refused for settings it
    will not run with)."""
    check_token_role(settings)
    state = State(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        state.close()

    routes = [
        Route("/", page(pages.recent)),
        Route("/change/{change_id:int}", page(pages.change)),
        Route("/row", page(pages.row)),
        Route("/row/at", page(pages.row_at)),
        Route("/transaction/{xid:int}", page(pages.transaction)),
        Route("/context", page(pages.context)),
        Route("/table", page(pages.table)),
        Route("/tail", page(pages.tail)),
        Route("/tail/events", pages.tail_events),
        Route("/revert", page(pages.revert_preview), methods=["GET"]),
        Route("/revert", page(pages.revert_confirm), methods=["POST"]),
        Route("/signin", signin, methods=["GET", "POST"]),
        Route("/signout", signout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[
        Middleware(SessionMiddleware, secret_key=settings.secret_key, session_cookie="bemi_serve",
                   same_site="lax", https_only=settings.https_only)])
    app.state.bemi = state
    return app
