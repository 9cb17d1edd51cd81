"""The console's plumbing: templates, the guard every page and action goes through (sign-in,
role, CSRF on POST), and the security headers of every response."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import jinja2
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import Client

from console import csrf
from console.auth import Principal, principal
from console.settings import ConsoleSettings, Role
from starter.kit import run_link, temporal

templates = jinja2.Environment(
    loader=jinja2.PackageLoader("console", "templates"),
    autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    undefined=jinja2.StrictUndefined,
)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}"
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


templates.filters["fmt"] = _fmt
templates.filters["age"] = _age
templates.globals["run_link"] = run_link


@dataclass
class Console:
    """What the pages share: settings, a pool, one Temporal client (connected on first use)."""

    settings: ConsoleSettings
    pool: asyncpg.Pool
    _client: Client | None = None

    async def temporal(self) -> Client:
        if self._client is None:
            self._client = await temporal()
        return self._client


@dataclass
class Ctx:
    request: Request
    app: Console
    who: Principal
    csrf_token: str
    form: FormData | None

    def field(self, name: str) -> str | None:
        """A form field, stripped; None when absent or blank."""
        value = self.form.get(name) if self.form is not None else None
        return value.strip() or None if isinstance(value, str) else None

    def render(self, template: str, status_code: int = 200, **data: Any) -> HTMLResponse:
        body = templates.get_template(template).render(
            who=self.who, csrf_token=self.csrf_token, path=self.request.url.path, Role=Role,
            done=DONE.get(self.request.query_params.get("done") or ""), **data)
        return HTMLResponse(body, status_code=status_code)


Handler = Callable[[Ctx], Awaitable[Response]]

# What an action's redirect may announce (`?done=`): only these, so a crafted link cannot put
# words of its own on the page.
DONE = {v: v for v in ("paused", "resumed", "unchanged", "approved", "rejected", "already approved",
                       "already rejected")}


def refuse(status: int, message: str) -> HTMLResponse:
    """A refusal page (nothing was done): 401, 403, 404 or 400 with one line."""
    body = templates.get_template("refused.html").render(status=status, message=message)
    return HTMLResponse(body, status_code=status)


def guard(needed: Role, *, post: bool = False) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """A page (GET) or an action (POST) for `needed` and above. Refused before the handler runs,
    so nothing is started or written: no sign-in (a page redirects to /login in token mode),
    a lower role, or (POST) a missing or wrong CSRF token."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            app: Console = request.app.state.console
            who = principal(app.settings, request)
            if who is None:
                if not post and app.settings.auth == "token":
                    return RedirectResponse("/login", status_code=303)
                return refuse(401, "sign in first")
            if not who.role.allows(needed):
                return refuse(403, f"{who.actor} is a {who.role.value}: this needs the {needed.value} role")
            nonce = csrf.nonce_of(request)
            form = None
            if post:
                form = await request.form()
                token = form.get(csrf.CSRF_FIELD)
                why = csrf.check(app.settings, request, token if isinstance(token, str) else None, who.actor)
                if why is not None:
                    return refuse(403, why)
            fresh = nonce is None
            nonce = nonce or csrf.new_nonce()
            response = await handler(Ctx(request, app, who, csrf.token_for(app.settings, nonce, who.actor), form))
            if fresh:
                set_csrf_cookie(response, app.settings, nonce)
            return response

        endpoint.__name__ = handler.__name__
        return endpoint

    return wrap


def set_csrf_cookie(response: Response, settings: ConsoleSettings, nonce: str) -> None:
    response.set_cookie(csrf.CSRF_COOKIE, nonce, httponly=True, samesite="strict", secure=settings.secure_cookies,
                        path="/")


SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; "
     b"form-action 'self'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # never to other sites; no-referrer would make Origin "null"
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """Every response: no framing, no inline scripts, no referrer, nothing cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)
