"""Turning data into HTML: Jinja2 templates with every value escaped (autoescape on, for
every template), control characters shown as visible escapes, links built from quoted parts."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import HTMLResponse

HERE = Path(__file__).parent
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def shown(value: Any) -> str:
    """Text as it can be read: control characters (which HTML cannot show, and a terminal or a
    copy would act on) as \\xNN or \\uNNNN escapes. Escaping for HTML is Jinja's job after."""
    text = "" if value is None else str(value)
    return CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)


def field(value: Any) -> Markup:
    """Text for a form field's value, exactly as given (so a form sent again asks the same),
    escaped: control characters as character references, never raw."""
    return Markup(CONTROL.sub(lambda m: f"&#x{ord(m.group()):x};", str(escape("" if value is None else value))))


def as_json(value: Any) -> str:
    """A JSON value as it is stored (strings quoted), control characters escaped."""
    return shown(json.dumps(value, ensure_ascii=False, default=str))


def iso(moment: datetime | None) -> str:
    return moment.astimezone(timezone.utc).isoformat() if moment else ""


def utc(moment: datetime | None) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC" if moment else ""


def local_input(moment: datetime | None) -> str:
    """A moment as the value of an <input type=datetime-local> in its own time zone."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S") if moment else ""


def make_environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(shown=shown, field=field, json=as_json, iso=iso, utc=utc, local_input=local_input)
    return env


def url(request: Request, path: str, **params: Any) -> str:
    """A link inside the app (under the path it is mounted at), with query parameters;
    None and empty values are left out, lists repeat their parameter."""
    pairs: list[tuple[str, Any]] = []
    for name, value in params.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None and item != "":
                pairs.append((name, item))
    query = "?" + urlencode(pairs) if pairs else ""
    return f"{request.scope.get('root_path', '')}{path}{query}"


class Renderer:
    """Renders a template with what every page has: the request, links, the viewer, CSRF."""

    def __init__(self) -> None:
        self.env = make_environment()

    def render(self, request: Request, template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
        html = self.fragment(request, template, **values)
        return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)

    def fragment(self, request: Request, template: str, **values: Any) -> str:
        def link(path: str, **params: Any) -> str:
            return url(request, path, **params)

        values.setdefault("viewer", None)
        values.setdefault("allow_revert", False)
        return self.env.get_template(template).render(
            request=request, url=link, csrf=request.session.get("csrf", "") if "session" in request.scope else "",
            **values)


# Scripts and styles only from this app; no framing (clickjacking); no referrer leaking ids.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
