"""The console's sign-in and CSRF rules as pure functions: static tokens and their sessions, the
trusted proxy's headers and group roles, CSRF tokens bound to a browser and an actor, and the
settings that refuse an unsafe configuration."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from starlette.requests import Request

from console import csrf
from console.auth import Principal, new_session, principal, proxy_principal, session_principal
from console.settings import ConsoleSettings, Role, parse_group_roles, parse_tokens

TOKENS = "alice:approver:alice-token-0123456789,bob:viewer:bob-token-0123456789ab"


def settings(**kw) -> ConsoleSettings:
    return ConsoleSettings(tokens=SecretStr(TOKENS), secret_key=SecretStr("k" * 32), **kw)


def request(headers: dict[str, str] | None = None, cookies: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if cookies:
        raw.append((b"cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()).encode()))
    raw.append((b"host", b"console.local"))
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw, "query_string": b""})


def test_roles_are_ordered():
    assert Role.APPROVER.allows(Role.OPERATOR) and Role.OPERATOR.allows(Role.VIEWER)
    assert not Role.VIEWER.allows(Role.OPERATOR) and not Role.OPERATOR.allows(Role.APPROVER)


@pytest.mark.parametrize("value, message", [
    ("alice:approver", "actor:role:token"),
    ("alice:admin:alice-token-0123456789", "must be one of viewer, operator, approver"),
    ("alice:viewer:short", "shorter than 16"),
    ("a:viewer:same-token-0123456789,b:viewer:same-token-0123456789", "share a token"),
])
def test_bad_token_entries_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        parse_tokens(value)


def test_invalid_settings_never_echo_a_token(monkeypatch):
    from billing.settings import InvalidSettings
    from console.settings import get_console_settings

    monkeypatch.setenv("CONSOLE_TOKENS", "alice:admin:secret-value-0123456789")
    get_console_settings.cache_clear()
    try:
        with pytest.raises(InvalidSettings) as e:
            get_console_settings()
    finally:
        get_console_settings.cache_clear()
    assert "CONSOLE_TOKENS" in str(e.value.code) and "secret-value" not in str(e.value.code)


def test_without_tokens_the_console_refuses_to_start():
    assert "CONSOLE_TOKENS is empty" in (ConsoleSettings().startup_problem() or "")
    assert settings().startup_problem() is None
    assert ConsoleSettings().host == "127.0.0.1"  # safe by default: loopback


def test_a_session_names_its_tokens_actor_until_it_expires_or_the_token_goes():
    s = settings()
    cookie = new_session(s, "alice-token-0123456789", now=1000)
    assert session_principal(s, cookie, now=1001) == Principal("alice", Role.APPROVER)
    assert session_principal(s, cookie, now=1000 + s.session_hours * 3600 + 1) is None
    body, mac = cookie.rsplit(".", 1)
    assert session_principal(s, f"{body}.{'0' * len(mac)}", now=1001) is None  # forged
    other_key = ConsoleSettings(tokens=SecretStr(TOKENS), secret_key=SecretStr("x" * 32))
    assert session_principal(other_key, cookie, now=1001) is None
    revoked = ConsoleSettings(tokens=SecretStr("bob:viewer:bob-token-0123456789ab"), secret_key=SecretStr("k" * 32))
    assert session_principal(revoked, cookie, now=1001) is None
    with pytest.raises(ValueError):
        new_session(s, "not-a-configured-token")


def test_proxy_headers_give_the_highest_mapped_role():
    s = settings(auth="proxy")
    r = request({"X-Forwarded-Email": "carol@example.com", "X-Forwarded-Groups": "staff,billing-operators,billing-viewers"})
    assert principal(s, r) == Principal("carol@example.com", Role.OPERATOR)
    assert proxy_principal(s, request({"X-Forwarded-Email": "dan@example.com", "X-Forwarded-Groups": "staff"})) is None
    assert proxy_principal(s, request({"X-Forwarded-Groups": "billing-approvers"})) is None
    # In proxy mode a session cookie means nothing; in token mode the headers mean nothing.
    token_mode = settings()
    assert principal(token_mode, r) is None


def test_a_proxy_secret_proves_the_request_came_through_the_proxy():
    s = settings(auth="proxy", proxy_secret=SecretStr("proxy-shared-secret"))
    headers = {"X-Forwarded-Email": "carol@example.com", "X-Forwarded-Groups": "billing-approvers"}
    assert proxy_principal(s, request(headers)) is None
    assert proxy_principal(s, request({**headers, "X-Console-Proxy-Secret": "wrong"})) is None
    assert proxy_principal(s, request({**headers, "X-Console-Proxy-Secret": "proxy-shared-secret"})) == \
        Principal("carol@example.com", Role.APPROVER)


def test_group_roles_parse():
    assert parse_group_roles("a=viewer, b=approver") == {"a": Role.VIEWER, "b": Role.APPROVER}
    with pytest.raises(ValueError, match="group=viewer"):
        parse_group_roles("a=root")


def test_a_csrf_token_is_bound_to_the_browser_and_the_actor():
    s = settings()
    nonce = csrf.new_nonce()
    token = csrf.token_for(s, nonce, "alice")
    cookies = {csrf.CSRF_COOKIE: nonce}
    assert csrf.check(s, request(cookies=cookies), token, "alice") is None
    assert csrf.check(s, request(cookies=cookies), token, "bob") is not None
    assert csrf.check(s, request(cookies={csrf.CSRF_COOKIE: csrf.new_nonce()}), token, "alice") is not None
    assert csrf.check(s, request(), token, "alice") is not None
    assert csrf.check(s, request(cookies=cookies), None, "alice") is not None
    assert csrf.check(s, request({"Origin": "https://evil.example"}, cookies), token, "alice") == "cross-origin request"
    assert csrf.check(s, request({"Origin": "null"}, cookies), token, "alice") == "cross-origin request"
    assert csrf.check(s, request({"Origin": "http://console.local"}, cookies), token, "alice") is None
