"""Who is asking: a signed session cookie after a static-token sign-in, or the identity an
authenticating proxy puts in trusted headers. Pure functions over the request's headers and
cookies; the pages decide what a role may do (`console.pages.guard`)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from starlette.requests import Request

from console.settings import ConsoleSettings, Role

SESSION_COOKIE = "console_session"
PROXY_SECRET_HEADER = "X-Console-Proxy-Secret"


@dataclass(frozen=True)
class Principal:
    actor: str  # recorded as the actor of every action (audited by the workflows)
    role: Role


def sign(key: bytes, purpose: str, payload: str) -> str:
    """Hex HMAC-SHA256 of `payload` for one purpose (a session is never a CSRF token)."""
    return hmac.new(key, f"{purpose}\x00{payload}".encode(), hashlib.sha256).hexdigest()


def token_fingerprint(token: str) -> str:
    """What a session remembers of its token: removing the token from CONSOLE_TOKENS ends its sessions."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def find_token(settings: ConsoleSettings, presented: str) -> Principal | None:
    """The entry of a presented static token (compared in constant time), or None."""
    found = None
    for entry in settings.token_entries():
        if hmac.compare_digest(entry.token.encode(), presented.encode()):
            found = Principal(entry.actor, entry.role)
    return found


def new_session(settings: ConsoleSettings, token: str, *, now: float | None = None) -> str:
    principal = find_token(settings, token)
    if principal is None:
        raise ValueError("unknown token")
    body = json.dumps({"fp": token_fingerprint(token),
                       "exp": int((now or time.time()) + settings.session_hours * 3600)})
    encoded = base64.urlsafe_b64encode(body.encode()).decode()
    return f"{encoded}.{sign(settings.signing_key(), 'session', encoded)}"


def session_principal(settings: ConsoleSettings, cookie: str | None, *, now: float | None = None) -> Principal | None:
    """The principal of a valid, unexpired session whose token is still configured."""
    if not cookie or "." not in cookie:
        return None
    encoded, mac = cookie.rsplit(".", 1)
    if not hmac.compare_digest(mac, sign(settings.signing_key(), "session", encoded)):
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(encoded.encode()))
        fingerprint, expires = str(body["fp"]), int(body["exp"])
    except (ValueError, KeyError, TypeError):
        return None
    if expires < (now or time.time()):
        return None
    for entry in settings.token_entries():
        if hmac.compare_digest(token_fingerprint(entry.token), fingerprint):
            return Principal(entry.actor, entry.role)
    return None


def proxy_principal(settings: ConsoleSettings, request: Request) -> Principal | None:
    """The proxy's user, with the highest role any of its groups maps to; None without a user,
    without a mapped group, or without the shared proxy secret when one is configured."""
    if settings.proxy_secret is not None:
        presented = request.headers.get(PROXY_SECRET_HEADER, "")
        if not hmac.compare_digest(presented.encode(), settings.proxy_secret.get_secret_value().encode()):
            return None
    user = request.headers.get(settings.proxy_user_header, "").strip()
    if not user:
        return None
    mapping = settings.group_roles()
    groups = {g.strip() for g in request.headers.get(settings.proxy_groups_header, "").split(",")}
    roles = [mapping[g] for g in groups if g in mapping]
    if not roles:
        return None
    return Principal(user, max(roles, key=lambda r: r.rank))


def principal(settings: ConsoleSettings, request: Request) -> Principal | None:
    if settings.auth == "proxy":
        return proxy_principal(settings, request)
    return session_principal(settings, request.cookies.get(SESSION_COOKIE))
