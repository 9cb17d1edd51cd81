"""Balance transactions: ``/v1/balance_transactions`` (list, retrieve), the record of every
movement of money: a charge adds one (``type: charge``, positive), a refund one (``type:
refund``, negative ``amount`` and ``net``). The emulator charges no fees (``fee`` 0, ``net`` =
``amount``) and makes funds available at once (``status: available``)."""

from __future__ import annotations

from typing import Any

from ..params import paginate
from ..state import RequestContext, Store, new_id
from .base import Params, Route, created_filter, retrieve

# Stripe's reporting category of each type the emulator creates.
REPORTING_CATEGORY = {"charge": "charge", "refund": "refund"}


def add_balance_transaction(
    s: Store, type_: str, amount: int, currency: str, source: str, description: str | None
) -> dict[str, Any]:
    now = s.now()
    return s.col("balance_transaction").add(
        {
            "id": new_id("txn_", 24),
            "object": "balance_transaction",
            "amount": amount,
            "available_on": now,
            "balance_type": "payments",
            "created": now,
            "currency": currency,
            "description": description,
            "exchange_rate": None,
            "fee": 0,
            "fee_details": [],
            "net": amount,
            "reporting_category": REPORTING_CATEGORY[type_],
            "source": source,
            "status": "available",
            "type": type_,
        }
    )


def list_balance_transactions(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    type_, source, currency = p.get("type"), p.get("source"), p.get("currency")
    cf = created_filter(p)

    def pred(o: dict[str, Any]) -> bool:
        return (
            (type_ is None or o["type"] == type_)
            and (source is None or o["source"] == source)
            and (currency is None or o["currency"] == currency.lower())
            and cf(o)
        )

    return paginate(
        s.col("balance_transaction").newest_first(pred),
        p,
        "/v1/balance_transactions",
        "balance_transaction",
    )


ROUTES = (
    Route("GET", "/v1/balance_transactions", list_balance_transactions),
    Route("GET", "/v1/balance_transactions/{id}", retrieve("balance_transaction")),
)
