"""BemiMiddleware: each request runs inside ``bemi_pg.context(BEMI_CONTEXT_FUNCTION(request))``.

Sync and async capable; put it after the middleware its function relies on (for example
``AuthenticationMiddleware`` when it reads ``request.user``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase
from django.utils.module_loading import import_string

from bemi_pg.context import context

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

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        with context(self.context_of(request)):
            response: HttpResponseBase = self.get_response(request)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        with context(self.context_of(request)):
            get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
            return await get_response(request)
