"""CSRF protection for every POST: a random per-browser nonce in an HttpOnly, SameSite=Strict
cookie, and in each form a token that is the HMAC of that nonce and the signed-in actor. A
forged cross-site POST has neither the cookie (SameSite) nor the token (it cannot read pages);
a token taken from one user is useless in another's browser. A present Origin header must also
be this console's own."""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request

from console.auth import sign
from console.settings import ConsoleSettings

CSRF_COOKIE = "console_csrf"
CSRF_FIELD = "csrf_token"


def nonce_of(request: Request) -> str | None:
    value = request.cookies.get(CSRF_COOKIE)
    return value if value and len(value) == 43 else None  # token_urlsafe(32)


def new_nonce() -> str:
    return secrets.token_urlsafe(32)


def token_for(settings: ConsoleSettings, nonce: str, actor: str) -> str:
    return sign(settings.signing_key(), "csrf", f"{nonce}\x00{actor}")


def same_origin(request: Request) -> bool:
    """True without an Origin header (older browsers, same-origin GET forms), else when it names
    the host the request was sent to."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    if origin == "null":
        return False
    return urlsplit(origin).netloc == request.headers.get("host", "")


def check(settings: ConsoleSettings, request: Request, presented: str | None, actor: str) -> str | None:
    """Why this POST is refused, or None when its token matches this browser and actor."""
    if not same_origin(request):
        return "cross-origin request"
    nonce = nonce_of(request)
    if nonce is None or not presented:
        return "missing CSRF token (reload the page and try again)"
    if not hmac.compare_digest(presented, token_for(settings, nonce, actor)):
        return "invalid CSRF token (reload the page and try again)"
    return None
