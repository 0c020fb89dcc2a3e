"""What every page shares: the settings, the app's state (sessions, the token viewer,
templates), who is asking, the page wrapper (sign-in check, CSRF check of forms, errors shown
as pages)."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import psycopg
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from bemi_pg.serve import auth
from bemi_pg.serve.render import Renderer, url


@dataclass(frozen=True)
class Settings:
    """dsn: the database (libpq string or URL): people sign in to its host, port and database
    with their own role; token viewers read through its role (or token_role). token: the
    read-only token (None: no token viewing). allow_revert: show the revert forms."""

    dsn: str = ""
    token: str | None = None
    token_role: str | None = None
    allow_revert: bool = False
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    https_only: bool = False
    session_idle_seconds: float = 3600


class Refused(Exception):
    """Settings the server will not run with."""


class BadRequest(Exception):
    """A URL or form the page cannot use: shown as a 400 page."""


class Forbidden(Exception):
    """Something this viewer may not do here: shown as a 403 page."""


@dataclass
class Who:
    """The viewer of a request and their connections."""

    viewer: auth.Viewer
    connections: auth.Connections


class State:
    """What the app holds: settings, sessions, the token viewer's connections, templates."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions = auth.Sessions(settings.session_idle_seconds)
        self.token_viewer = (auth.Viewer("token viewer (read-only)", settings.dsn, settings.token_role, may_write=False)
                             if settings.token else None)
        self.token_connections = auth.Connections(settings.dsn)
        self.renderer = Renderer()

    def who(self, request: Request) -> Who | None:
        session = self.sessions.get(request.session.get("sid"))
        if session is not None:
            return Who(session.viewer, session.connections)
        header = request.headers.get("authorization", "")
        bearer = header[7:] if header.lower().startswith("bearer ") else None
        if self.token_viewer and (auth.same(request.session.get("token"), auth.token_mark(self.settings.token))
                                  or auth.same(bearer, self.settings.token)):
            return Who(self.token_viewer, self.token_connections)
        return None

    def close(self) -> None:
        self.sessions.close()
        self.token_connections.close()


def state_of(request: Request) -> State:
    return request.app.state.bemi  # type: ignore[no-any-return]


Handler = Callable[[Request, Who], Response]


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A page for signed-in people and token viewers: the handler runs in a thread with the
    viewer; database errors and bad requests become error pages with their status."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        state = state_of(request)
        who = state.who(request)
        if who is None:
            if request.headers.get("accept", "").startswith("text/event-stream"):
                return Response("sign in first", status_code=401)
            path = request.url.path[len(request.scope.get("root_path", "")):] or "/"
            return RedirectResponse(url(request, "/signin", next=path + (
                "?" + request.url.query if request.url.query else "")), status_code=303)
        if request.method == "POST":
            request.state.form = await request.form()
            if not auth.same(str(request.state.form.get("csrf") or ""), request.session.get("csrf")):
                return error_page(request, who.viewer, Forbidden(
                    "This form has expired or did not come from this page: open the page again and resubmit."))
        try:
            return await run_in_threadpool(handler, request, who)
        except (BadRequest, Forbidden, psycopg.Error) as error:
            return error_page(request, who.viewer, error)

    return endpoint


STATUS_OF_SQLSTATE = {"42501": 403, "42P01": 404, "55000": 409, "22023": 400, "22007": 400, "22008": 400,
                      "0A000": 400, "22000": 400, "22P02": 400, "42704": 404, "23503": 409, "23505": 409, "25006": 403,
                      "57014": 503}


def error_page(request: Request, viewer: auth.Viewer | None, error: Exception) -> Response:
    state = state_of(request)
    if isinstance(error, psycopg.Error):
        diag = error.diag
        status = STATUS_OF_SQLSTATE.get(diag.sqlstate or "", 500)
        message, sqlstate, hint = diag.message_primary or str(error), diag.sqlstate, diag.message_hint
    else:
        status = 403 if isinstance(error, Forbidden) else 400
        message, sqlstate, hint = str(error), None, None
    return state.renderer.render(request, "error.html", status_code=status, viewer=viewer, message=message,
                                 sqlstate=sqlstate, hint=hint, status=status)


