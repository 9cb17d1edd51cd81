"""Stripe-shaped API errors."""

from __future__ import annotations

from typing import Any

DOC_BASE = "https://stripe.com/docs/error-codes"


class StripeError(Exception):
    """Raised by handlers; rendered as ``{"error": {...}}`` with ``status``.

    ``saved`` says whether an idempotent request that ends in this error stores its
    result: Stripe does not save request-validation failures (bad/missing params).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        saved: bool = True,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})
        self.saved = saved

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        err: dict[str, Any] = {
            "type": self.type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "doc_url": f"{DOC_BASE}#{self.code.replace('_', '-')}" if self.code else None,
            "request_log_url": (
                f"https://dashboard.stripe.com/test/logs/{request_id}" if request_id else None
            ),
        }
        return {"error": err}


def invalid(
    message: str, param: str | None = None, code: str | None = None, **kw: Any
) -> StripeError:
    """A request-validation failure (400, never saved for idempotency)."""
    kw.setdefault("saved", False)
    return StripeError(400, message, param=param, code=code, **kw)


def missing(param: str) -> StripeError:
    return invalid(f"Missing required param: {param}.", param, "parameter_missing")


def unknown_param(param: str) -> StripeError:
    return invalid(f"Received unknown parameter: {param}", param, "parameter_unknown")


def no_such(kind: str, obj_id: str, param: str | None = "id", status: int = 404) -> StripeError:
    return StripeError(status, f"No such {kind}: '{obj_id}'", code="resource_missing", param=param)


def rate_limited(reason: str = "global-rate") -> StripeError:
    return StripeError(
        429,
        "Request rate limit exceeded. You can learn more about rate limits here "
        "https://stripe.com/docs/rate-limits.",
        code="rate_limit",
        headers={"Stripe-Rate-Limited-Reason": reason},
        saved=False,
    )
