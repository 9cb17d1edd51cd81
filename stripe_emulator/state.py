"""The emulator's in-memory state (pure python, no HTTP): the clock, ids, the rate-limit bucket,
object collections, events and idempotency records, all held by ``Store``."""

from __future__ import annotations

import copy
import fnmatch
import random
import secrets
import string
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .config import API_VERSION, DAY, Config
from .errors import no_such
from .limits import RateLimits, RequestLog, TokenBucket
from .meter_event_log import MeterEventLog

__all__ = ["TokenBucket"]  # moved to limits; still importable from here

EVENT_RETENTION_SECONDS = 30 * DAY
IDEMPOTENCY_TTL_SECONDS = DAY

_ALNUM = string.ascii_letters + string.digits


class EmulatorClock:
    """Emulator time = real time + an offset that only moves forward via :meth:`advance`."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.frozen_at: float | None = None

    def now_float(self) -> float:
        base = self.frozen_at if self.frozen_at is not None else time.time()
        return base + self.offset

    def freeze(self, frozen: bool) -> int:
        """Stop (or restart) the clock at the current emulator time; ``advance`` still works."""
        if frozen and self.frozen_at is None:
            self.frozen_at = float(int(time.time()))
        elif not frozen and self.frozen_at is not None:
            self.offset += self.frozen_at - time.time()
            self.frozen_at = None
        return self.now()

    def now(self) -> int:
        return int(self.now_float())

    def advance(self, seconds: float) -> int:
        if seconds < 0:
            raise ValueError("the emulator clock only moves forward")
        self.offset += seconds
        return self.now()

    def reset(self) -> None:
        self.offset = 0.0
        self.frozen_at = None


_ID_RNG = random.Random(secrets.randbits(64))  # ids only; never the (seeded) fault RNG


def new_id(prefix: str, n: int = 24) -> str:
    return prefix + "".join(_ID_RNG.choices(_ALNUM, k=n))


def new_request_id() -> str:
    return new_id("req_", 14)


@dataclass
class SavedResponse:
    fingerprint: tuple[str, str, str]
    status: int
    body: bytes
    headers: dict[str, str]
    created: float


@dataclass
class RequestContext:
    """Per-request data handlers need (for ``event.request``)."""

    request_id: str | None = None
    idempotency_key: str | None = None
    api_key: str | None = None


class Collection:
    """Objects of one type in creation order (lists are served newest first)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.objects: dict[str, dict[str, Any]] = {}

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.objects[obj["id"]] = obj
        return obj

    def get(self, obj_id: str, param: str | None = "id", status: int = 404) -> dict[str, Any]:
        obj = self.objects.get(obj_id)
        if obj is None:
            raise no_such(self.kind, obj_id, param=param, status=status)
        return obj

    def newest_first(
        self, pred: Callable[[dict[str, Any]], bool] | None = None
    ) -> list[dict[str, Any]]:
        vals = reversed(self.objects.values())
        if pred is None:
            return list(vals)
        return [o for o in vals if pred(o)]


def event_type_matches(pattern: str, event_type: str) -> bool:
    if pattern == "*":
        return True
    return fnmatch.fnmatchcase(event_type, pattern)


def snapshot(obj: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(obj)


class Store:
    """All objects, events and bookkeeping. What the API does with them lives in ``resources``."""

    def __init__(self, config: Config | None = None, clock: EmulatorClock | None = None) -> None:
        self.config = config or Config()
        self.clock = clock or EmulatorClock()
        self.limits = RateLimits(self.config)
        self.request_log = RequestLog(self.config.request_log_size)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        # Mutation counter for the state file's periodic save (bumped by the app, see persist).
        self.changes = 0
        self.reset_state()

    # -- lifecycle -----------------------------------------------------------
    def reset_state(self) -> None:
        self.clock.reset()
        self.collections: dict[str, Collection] = {
            k: Collection(k)
            for k in (
                "customer",
                "product",
                "price",
                "subscription",
                "subscription_item",
                "invoice",
                "checkout.session",
                "webhook_endpoint",
                "billing.meter",
                "invoice_payment",
                "charge",
                "refund",
                "balance_transaction",
                "invoiceitem",
                "v2.core.event_destination",
                "credit_note",
                "customer_balance_transaction",
            )
        }
        self.webhook_secrets: dict[str, str] = {}
        self.events: list[dict[str, Any]] = []
        self.events_by_id: dict[str, dict[str, Any]] = {}
        self.v2_events: dict[str, dict[str, Any]] = {}  # GET /v2/core/events/{id} (not persisted)
        self.idempotency: dict[tuple[str, str], SavedResponse] = {}
        self.in_flight: set[tuple[str, str]] = set()
        self.stats: dict[str, int] = {}
        self.meter_events = MeterEventLog()
        self.meters_by_event_name: dict[str, dict[str, Any]] = {}
        self.reseed()
        self.limits.configure(self.config)
        self.request_log.clear()

    def reseed(self) -> None:
        self.rng = random.Random(self.config.seed)
        for f in self.config.faults:
            f.injected = 0

    def configure(self, fields: dict[str, Any]) -> None:
        self.config.update(fields)
        if {"rate_limit", "endpoint_rate_limit", "endpoint_rate_limits"} & set(fields):
            self.limits.configure(self.config)
        if "request_log_size" in fields:
            self.request_log.resize(self.config.request_log_size)
        if "seed" in fields or "faults" in fields:
            self.reseed()

    def now(self) -> int:
        return self.clock.now()

    def col(self, kind: str) -> Collection:
        return self.collections[kind]

    # -- idempotency -------------------------------------------------------------
    def purge_idempotency(self) -> None:
        horizon = self.clock.now_float() - IDEMPOTENCY_TTL_SECONDS
        if self.idempotency and len(self.idempotency) % 1024 == 0:
            for k in [k for k, v in self.idempotency.items() if v.created < horizon]:
                del self.idempotency[k]

    def saved_response(self, scope: tuple[str, str]) -> SavedResponse | None:
        saved = self.idempotency.get(scope)
        if saved is None:
            return None
        if saved.created < self.clock.now_float() - IDEMPOTENCY_TTL_SECONDS:
            del self.idempotency[scope]
            return None
        return saved

    # -- events ------------------------------------------------------------------
    def emit(
        self,
        event_type: str,
        obj: dict[str, Any],
        ctx: RequestContext | None,
        previous: dict[str, Any] | None = None,
        explicit_only: bool = False,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "object": {k: v for k, v in snapshot(obj).items() if not k.startswith("_")}
        }
        if previous is not None:
            data["previous_attributes"] = previous
        endpoints = [
            we
            for we in self.col("webhook_endpoint").objects.values()
            if we["status"] == "enabled"
            and any(
                (p == event_type) if explicit_only else event_type_matches(p, event_type)
                for p in we["enabled_events"]
            )
        ]
        event = {
            "id": new_id("evt_"),
            "object": "event",
            "api_version": API_VERSION,
            "created": self.now(),
            "data": data,
            "livemode": False,
            "pending_webhooks": len(endpoints),
            "request": {
                "id": ctx.request_id if ctx else None,
                "idempotency_key": ctx.idempotency_key if ctx else None,
            },
            "type": event_type,
        }
        self.events.append(event)
        self.events_by_id[str(event["id"])] = event
        if endpoints:
            for listener in self.listeners:
                listener({"event": event, "endpoints": [we["id"] for we in endpoints]})
        return event

    def visible_events(self) -> Iterable[dict[str, Any]]:
        horizon = self.now() - EVENT_RETENTION_SECONDS
        for ev in reversed(self.events):
            if ev["created"] >= horizon:
                yield ev

    def get_event(self, event_id: str) -> dict[str, Any]:
        ev = self.events_by_id.get(event_id)
        if ev is None or ev["created"] < self.now() - EVENT_RETENTION_SECONDS:
            raise no_such("event", event_id)
        return ev

    def record_stat(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1
