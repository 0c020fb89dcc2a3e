"""The project's BEMI_CONTEXT_FUNCTION."""

from typing import Any

from django.http import HttpRequest


def get_bemi_context(request: HttpRequest) -> dict[str, Any]:
    return {"user_id": int(request.headers["X-User-Id"]), "endpoint": request.path, "method": request.method}
