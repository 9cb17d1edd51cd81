"""The Stripe object -> row mappings, on Stripe's own example objects (fixtures3.json)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from billing.stripe_objects import (
    StripeObjectError,
    credit_grant,
    customer_row,
    invoice_row,
    subscription_row,
)
from starter.webhook_commands import parse_time
from webhooks.activities import type_patterns

FIXTURES = json.loads((Path(__file__).parent.parent / "emulator" / "fixtures" / "stripe_fixtures3.json").read_text())


def fixture(name: str) -> dict:
    return copy.deepcopy(FIXTURES["resources"][name])


def test_subscription_period_comes_from_its_items():
    sub = fixture("subscription")
    sub["items"]["data"] = [
        {"id": "si_b", "price": {"id": "price_2"}, "quantity": 1, "current_period_start": 200, "current_period_end": 900},
        {"id": "si_a", "price": "price_1", "quantity": 3, "current_period_start": 100, "current_period_end": 800},
    ]
    row = subscription_row(sub)
    assert row.current_period_start == datetime.fromtimestamp(100, UTC)
    assert row.current_period_end == datetime.fromtimestamp(900, UTC)
    assert [i["id"] for i in row.items] == ["si_a", "si_b"]  # stable order: comparisons are exact
    assert [i["price"] for i in row.items] == ["price_1", "price_2"]  # expanded or not
    assert row.compared()["current_period_end"] == datetime.fromtimestamp(900, UTC).isoformat()


def test_subscription_without_items_or_customer():
    sub = fixture("subscription")
    sub["items"]["data"] = []
    assert subscription_row(sub).current_period_start is None
    sub["customer"] = None
    with pytest.raises(StripeObjectError, match="no customer"):
        subscription_row(sub)
    with pytest.raises(StripeObjectError, match="not a subscription"):
        subscription_row(fixture("customer"))


def test_invoice_subscription_from_parent():
    inv = fixture("invoice")
    inv["parent"] = {"type": "subscription_details", "subscription_details": {"subscription": "sub_1"}}
    row = invoice_row(inv)
    assert row.stripe_subscription_id == "sub_1"
    inv["parent"] = None
    assert invoice_row(inv).stripe_subscription_id is None


def test_customer_id_from_metadata_else_stripe_id():
    cus = fixture("customer")
    cus["metadata"] = {"customer_id": "app-1"}
    assert customer_row(cus).customer_id == "app-1"
    cus["metadata"] = {}
    assert customer_row(cus).customer_id == cus["id"]


def session(**kw) -> dict:
    s = fixture("checkout.session")
    s.update({"mode": "payment", "status": "complete", "payment_status": "paid", "customer": "cus_1",
              "metadata": {"credits": "500"}})
    s.update(kw)
    return s


def test_credit_grant_only_for_paid_payment_sessions():
    g = credit_grant(session())
    assert g is not None and g.amount == 500 and g.source == f"checkout:{session()['id']}"
    assert credit_grant(session(mode="subscription")) is None
    assert credit_grant(session(payment_status="unpaid")) is None
    assert credit_grant(session(metadata={})) is None


@pytest.mark.parametrize("value", ["abc", "1.5", "0", "-3"])
def test_credit_grant_refuses_bad_amounts(value):
    with pytest.raises(StripeObjectError, match="credits"):
        credit_grant(session(metadata={"credits": value}))


def test_type_patterns_and_time_parsing():
    assert type_patterns(["customer.*", "invoice.paid"]) == ["customer.%", "invoice.paid"]
    now = datetime(2026, 11, 21, 12, tzinfo=UTC)
    assert parse_time("3d", now=now) == datetime(2026, 11, 18, 12, tzinfo=UTC)
    assert parse_time("90m", now=now) == datetime(2026, 11, 21, 10, 30, tzinfo=UTC)
    assert parse_time("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_time("2026-11-01T05:00:00Z") == datetime(2026, 11, 1, 5, tzinfo=UTC)
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday")
