"""The console's settings (CONSOLE_*, pydantic-settings), kept apart from billing.settings: only
the console process reads them. Safe by default: loopback, token sign-in, no usable token until
one is configured (the console refuses to start rather than run open)."""

from __future__ import annotations

import secrets
from enum import StrEnum
from functools import lru_cache
from typing import Literal, NamedTuple

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from billing.settings import InvalidSettings

MIN_TOKEN_LENGTH = 16  # a static token is a password: short ones are guessable


class Role(StrEnum):
    """Each role may do what the ones before it may: viewer reads, operator pauses, resumes and
    repairs, approver also approves or rejects plans."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    APPROVER = "approver"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


class TokenEntry(NamedTuple):
    actor: str
    role: Role
    token: str


def parse_tokens(value: str) -> list[TokenEntry]:
    """`actor:role:token` entries separated by commas (or newlines)."""
    out: list[TokenEntry] = []
    for raw in value.replace("\n", ",").split(","):
        entry = raw.strip()
        if not entry:
            continue
        parts = entry.split(":", 2)
        if len(parts) != 3 or not parts[0].strip():
            raise ValueError("each entry is actor:role:token")
        actor, role, token = parts[0].strip(), parts[1].strip(), parts[2].strip()
        if role not in Role.__members__.values():
            raise ValueError(f"role of {actor!r} must be one of {', '.join(Role)}")
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the token of {actor!r} is shorter than {MIN_TOKEN_LENGTH} characters")
        out.append(TokenEntry(actor, Role(role), token))
    if len({e.token for e in out}) != len(out):
        raise ValueError("two entries share a token")
    return out


def parse_group_roles(value: str) -> dict[str, Role]:
    """`group=role` pairs separated by commas: the proxy's groups header mapped to roles."""
    out: dict[str, Role] = {}
    for raw in value.split(","):
        if not raw.strip():
            continue
        group, sep, role = raw.partition("=")
        if not sep or role.strip() not in Role.__members__.values():
            raise ValueError(f"{raw.strip()!r} is not group=viewer|operator|approver")
        out[group.strip()] = Role(role.strip())
    return out


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONSOLE_", env_file=None, extra="ignore", case_sensitive=False)

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=1, le=65535)
    auth: Literal["token", "proxy"] = "token"
    # token sign-in: `actor:role:token,...`; a SecretStr so it never lands in a log or error
    tokens: SecretStr = SecretStr("")
    # signs sessions and CSRF tokens; unset: a random key per process (sign in again after a restart)
    secret_key: SecretStr | None = None
    session_hours: int = Field(default=12, ge=1, le=24 * 7)
    secure_cookies: bool = False  # true behind HTTPS: cookies then carry `Secure`
    # proxy sign-in: the authenticating proxy's headers (oauth2-proxy's names by default)
    proxy_user_header: str = "X-Forwarded-Email"
    proxy_groups_header: str = "X-Forwarded-Groups"
    proxy_group_roles: str = "billing-viewers=viewer,billing-operators=operator,billing-approvers=approver"
    # when set, a request must carry it in X-Console-Proxy-Secret: proof it came through the proxy
    proxy_secret: SecretStr | None = None
    # how long a page waits for a workflow it starts to answer (customer view)
    workflow_wait_seconds: float = Field(default=60, gt=0, le=600)

    @field_validator("tokens")
    @classmethod
    def _tokens_parse(cls, v: SecretStr) -> SecretStr:
        parse_tokens(v.get_secret_value())
        return v

    @field_validator("proxy_group_roles")
    @classmethod
    def _roles_parse(cls, v: str) -> str:
        parse_group_roles(v)
        return v

    def token_entries(self) -> list[TokenEntry]:
        return parse_tokens(self.tokens.get_secret_value())

    def group_roles(self) -> dict[str, Role]:
        return parse_group_roles(self.proxy_group_roles)

    def signing_key(self) -> bytes:
        return self.secret_key.get_secret_value().encode() if self.secret_key else _PROCESS_KEY

    def startup_problem(self) -> str | None:
        """Why this configuration must not serve (one line), or None."""
        if self.auth == "token" and not self.token_entries():
            return "CONSOLE_TOKENS is empty: nobody could sign in (set actor:role:token entries, or CONSOLE_AUTH=proxy)"
        if self.auth == "proxy" and not self.group_roles():
            return "CONSOLE_PROXY_GROUP_ROLES is empty: no proxy group maps to a role"
        return None


_PROCESS_KEY = secrets.token_bytes(32)


@lru_cache(maxsize=1)
def get_console_settings() -> ConsoleSettings:
    try:
        return ConsoleSettings()
    except ValidationError as e:
        raise InvalidSettings(_error_line(e)) from None


def _error_line(error: ValidationError) -> str:
    """One line naming every invalid CONSOLE_* variable and why; values are never echoed (tokens)."""
    parts = [f"CONSOLE_{'.'.join(str(x) for x in e['loc']).upper()}: {e['msg'].removeprefix('Value error, ')}"
             for e in error.errors()]
    return "invalid settings: " + "; ".join(parts)
