"""The ASGI middleware for FastAPI and any Starlette app: each request runs in its context.

    app.add_middleware(BemiFastAPIMiddleware, set_context=lambda request: {
        "user_id": request.headers.get("x-user-id"), "endpoint": request.url.path,
        "method": request.method,
    })

``set_context`` gets a ``starlette.requests.Request`` (without its body) and returns a
mapping, None, or an awaitable of either. ``request_id=True`` adds ``"request_id"`` to the
context: the request's X-Request-ID header, or a new UUID, so
``SELECT * FROM bemi.revert_context('{"request_id": "..."}')`` can undo one request.
The context lives in a ContextVar, so concurrent requests never see each other's, and sync endpoints run in threads see their own. Writes
made through an engine registered with ``bemi_pg.sqlalchemy.register`` carry it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from bemi_pg.context import Context, context, request_id

ContextFunction = Callable[[Request], "Context | None | Awaitable[Context | None]"]

__all__ = ["BemiFastAPIMiddleware", "BemiMiddleware"]


class BemiMiddleware:
    """A plain ASGI middleware: each HTTP request runs inside ``bemi_pg.context``."""

    def __init__(self, app: ASGIApp, set_context: ContextFunction, request_id: bool = False) -> None:
        self.app = app
        self.set_context = set_context
        self.request_id = request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        values = self.set_context(request)
        if inspect.isawaitable(values):
            values = await values
        if self.request_id:
            values = {"request_id": request_id(request.headers.get("x-request-id")), **(values or {})}
        with context(values):
            await self.app(scope, receive, send)


BemiFastAPIMiddleware = BemiMiddleware
