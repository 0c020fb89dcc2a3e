"""BemiMiddleware: each request runs inside ``bemi_pg.context(BEMI_CONTEXT_FUNCTION(request))``.

Sync and async capable; put it after the middleware its function relies on (for example
``AuthenticationMiddleware`` when it reads ``request.user``). With ``BEMI_REQUEST_ID = True``
the context also holds ``"request_id"``: the request's X-Request-ID header, or a new UUID,
so ``SELECT * FROM bemi.revert_context('{"request_id": "..."}')`` can undo one request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase
from django.utils.module_loading import import_string

from bemi_pg.context import context, request_id

GetResponse = Callable[[HttpRequest], Any]


def context_function() -> Callable[[HttpRequest], Any]:
    path = getattr(settings, "BEMI_CONTEXT_FUNCTION", None)
    if not path:
        raise ImproperlyConfigured(
            "bemi: BemiMiddleware needs BEMI_CONTEXT_FUNCTION, the dotted path of a function of the request"
        )
    function: Callable[[HttpRequest], Any] = import_string(path)
    return function


class BemiMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.context_of = context_function()
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def values(self, request: HttpRequest) -> dict[str, Any] | None:
        """The request's context: the function's result, after its request id when asked for."""
        values = self.context_of(request)
        if not getattr(settings, "BEMI_REQUEST_ID", False):
            return values  # type: ignore[no-any-return]
        return {"request_id": request_id(request.headers.get("X-Request-ID")), **(values or {})}

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        with context(self.values(request)):
            response: HttpResponseBase = self.get_response(request)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        with context(self.values(request)):
            get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
            return await get_response(request)
