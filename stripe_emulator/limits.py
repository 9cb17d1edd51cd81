"""Stripe's rate limits (the account's global bucket and one bucket per endpoint) and the request
log benchmarks read (``GET /_emulator/requests/log``)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from .config import Config


class TokenBucket:
    """``rate`` tokens per second, burst = one second's worth (at least 1)."""

    def __init__(self, rate: float) -> None:
        self.set_rate(rate)

    def set_rate(self, rate: float) -> None:
        self.rate = float(rate)
        self.capacity = max(1.0, self.rate)
        self.tokens = self.capacity
        self.last = time.monotonic()

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def peek(self) -> bool:
        """Whether take() would succeed now (takes nothing)."""
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        return self.tokens >= 1.0


class RateLimits:
    """The global bucket (``rate_limit``) and, per route, ``endpoint_rate_limits[route]`` or
    ``endpoint_rate_limit``. ``rate_limit: 0`` switches every limit off."""

    def __init__(self, config: Config) -> None:
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.config = config
        self.global_bucket = TokenBucket(config.rate_limit)
        self.endpoints: dict[str, TokenBucket] = {}

    def _endpoint_bucket(self, route: str) -> TokenBucket | None:
        rate = self.config.endpoint_rate_limits.get(route, self.config.endpoint_rate_limit)
        if rate <= 0:
            return None
        bucket = self.endpoints.get(route)
        if bucket is None or bucket.rate != rate:
            bucket = self.endpoints[route] = TokenBucket(rate)
        return bucket

    def admit(self, route: str) -> str | None:
        """None when the request may go on, else the ``Stripe-Rate-Limited-Reason``. A request
        refused by one bucket takes no token from the other (as if it never arrived)."""
        if self.config.rate_limit <= 0:
            return None
        endpoint = self._endpoint_bucket(route)
        if endpoint is not None and not endpoint.peek():
            return "endpoint-rate"
        if route in self.config.own_bucket_routes:  # live meter events: not the account's limit
            if endpoint is not None:
                endpoint.take()
            return None
        if not self.global_bucket.take():
            return "global-rate"
        if endpoint is not None:
            endpoint.take()
        return None


@dataclass(frozen=True)
class LoggedRequest:
    at: float  # wall-clock unix seconds (benchmarks measure ops per second of real time)
    route: str  # "GET /v1/billing/meters/{id}/event_summaries"
    status: int
    key: str  # what the request was about: "<meter>/<customer>" for summaries, else ""

    def to_list(self) -> list[Any]:
        return [round(self.at, 4), self.route, self.status, self.key]


class RequestLog:
    """Every API request (429s included), oldest dropped past ``size``."""

    def __init__(self, size: int) -> None:
        self.entries: deque[LoggedRequest] = deque(maxlen=size or None)

    def resize(self, size: int) -> None:
        self.entries = deque(self.entries, maxlen=size or None)

    def add(self, route: str, status: int, key: str = "") -> None:
        self.entries.append(LoggedRequest(time.time(), route, status, key))

    def select(self, since: float = 0.0, route: str | None = None) -> list[LoggedRequest]:
        return [e for e in self.entries if e.at >= since and (route is None or e.route == route)]

    def clear(self) -> None:
        self.entries.clear()
