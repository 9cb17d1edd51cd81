"""The emulator's settings (``Config``, with its injected ``Fault``s) and API constants."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

API_VERSION = "2026-10-28.endive"
DAY = 86400


@dataclass
class Fault:
    path_prefix: str = "/"
    method: str | None = None
    status: int | None = 500
    probability: float = 1.0
    latency_ms: int = 0
    max_count: int | None = None
    after: bool = False  # run the handler, save the result, then answer the fault
    code: str | None = None  # error code override (429 + "lock_timeout", 402 card codes, ...)
    injected: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fault:
        known = {
            "path_prefix",
            "method",
            "status",
            "probability",
            "latency_ms",
            "max_count",
            "after",
            "code",
        }
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown fault fields: {sorted(extra)}")
        f = cls(**{k: d[k] for k in known if k in d})
        if f.method:
            f.method = f.method.upper()
        if not 0.0 <= float(f.probability) <= 1.0:
            raise ValueError("probability must be within 0..1")
        return f

    def to_dict(self) -> dict[str, Any]:
        return {
            "path_prefix": self.path_prefix,
            "method": self.method,
            "status": self.status,
            "probability": self.probability,
            "latency_ms": self.latency_ms,
            "max_count": self.max_count,
            "after": self.after,
            "code": self.code,
            "injected": self.injected,
        }

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method != method:
            return False
        if self.max_count is not None and self.injected >= self.max_count:
            return False
        return path.startswith(self.path_prefix)


@dataclass
class Config:
    rate_limit: float = 25.0
    summary_lag_seconds: float = 0.0
    identifier_dedupe_seconds: float = float(DAY)
    drop_webhooks: bool = False
    # Fraction of (event, endpoint) deliveries never attempted, drawn from the seeded RNG: a
    # partial outage. Like an outage, a dropped delivery is never resent.
    webhook_drop_rate: float = 0.0
    webhook_retry_schedule_seconds: list[float] = field(
        default_factory=lambda: [1.0, 5.0, 30.0, 120.0]
    )
    webhook_secret: str | None = None
    webhook_timeout_seconds: float = 10.0
    webhook_signature_clock: str = "emulator"  # or "real"
    faults: list[Fault] = field(default_factory=list)
    seed: int = 0
    # Stripe's per-endpoint limit (25/s by default, live mode too), keyed by route such as
    # "GET /v1/billing/meters/{id}/event_summaries"; overrides per route; 0 = none.
    # `rate_limit: 0` switches every limit off (the tests' default).
    endpoint_rate_limit: float = 25.0
    endpoint_rate_limits: dict[str, float] = field(default_factory=dict)
    # Routes with a bucket of their own outside the account's limit: live mode's meter events
    # ("POST /v1/billing/meter_events", 1000/s in endpoint_rate_limits). Test mode: none (they
    # count toward the 25/s).
    own_bucket_routes: list[str] = field(default_factory=list)
    # Entries kept by the request log (GET /_emulator/requests/log), oldest dropped first.
    request_log_size: int = 500_000
    # Stripe's invoice finalization grace period: a renewal invoice stays a draft this long
    # after its period ends (Stripe: 1 h by default, configurable up to 72 h).
    invoice_finalization_grace_seconds: float = 3600.0

    FIELDS = (
        "rate_limit",
        "summary_lag_seconds",
        "identifier_dedupe_seconds",
        "drop_webhooks",
        "webhook_drop_rate",
        "webhook_retry_schedule_seconds",
        "webhook_secret",
        "webhook_timeout_seconds",
        "webhook_signature_clock",
        "faults",
        "seed",
        "endpoint_rate_limit",
        "endpoint_rate_limits",
        "own_bucket_routes",
        "request_log_size",
        "invoice_finalization_grace_seconds",
    )

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.FIELDS}
        d["faults"] = [f.to_dict() for f in self.faults]
        d["webhook_retry_schedule_seconds"] = list(self.webhook_retry_schedule_seconds)
        d["endpoint_rate_limits"] = dict(self.endpoint_rate_limits)
        d["own_bucket_routes"] = list(self.own_bucket_routes)
        return d

    def update(self, fields: dict[str, Any]) -> None:
        unknown = set(fields) - set(self.FIELDS)
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        for k, v in fields.items():
            if k == "faults":
                v = [Fault.from_dict(f) if isinstance(f, dict) else f for f in (v or [])]
            elif k in (
                "rate_limit",
                "summary_lag_seconds",
                "identifier_dedupe_seconds",
                "webhook_timeout_seconds",
                "endpoint_rate_limit",
            ):
                v = float(v)
                if v < 0:
                    raise ValueError(f"{k} must be >= 0")
            elif k == "invoice_finalization_grace_seconds":
                v = float(v)
                if not 0 <= v <= 72 * 3600:
                    raise ValueError(f"{k} must be within 0..259200 (Stripe allows up to 72 h)")
            elif k == "drop_webhooks":
                v = bool(v)
            elif k == "webhook_drop_rate":
                v = float(v)
                if not 0.0 <= v <= 1.0:
                    raise ValueError("webhook_drop_rate must be between 0 and 1")
            elif k == "seed":
                v = int(v)
            elif k == "request_log_size":
                v = int(v)
                if v < 0:
                    raise ValueError("request_log_size must be >= 0")
            elif k == "endpoint_rate_limits":
                v = {str(route): float(rate) for route, rate in (v or {}).items()}
                if any(rate < 0 for rate in v.values()):
                    raise ValueError("endpoint_rate_limits must be >= 0")
            elif k == "own_bucket_routes":
                v = [str(route) for route in (v or [])]
            elif k == "webhook_retry_schedule_seconds":
                v = [float(x) for x in (v or [])]
            elif k == "webhook_signature_clock" and v not in ("emulator", "real"):
                raise ValueError("webhook_signature_clock must be 'emulator' or 'real'")
            setattr(self, k, v)
