"""The pure comparison behind `customer show` (customer/compare.py) and the customer id check."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from customer.compare import compare
from customer.types import Credits as CreditView
from customer.types import (
    CustomerSnapshot,
    Domain,
    InspectCustomerInput,
    MeterUsage,
    Pair,
    Purchase,
    RepairCustomerInput,
    Usage,
    UsageFinding,
)

CUS = {"customer_id": "acme", "stripe_customer_id": "cus_A", "email": "a@x", "name": "Acme", "deleted": False}


def snap(**kw) -> CustomerSnapshot:
    base = dict(ref="acme", customer_id="acme", stripe_customer_id="cus_A", read_at=datetime(2026, 11, 29, tzinfo=UTC),
                customer=Pair(id="acme", local=dict(CUS), stripe=dict(CUS)))
    base.update(kw)
    return CustomerSnapshot(**base)


def keys(s: CustomerSnapshot) -> list[tuple[str, str, str]]:
    return [(m.domain.value, m.entity, m.field) for m in compare(s)]


def test_agreeing_sides_have_no_mismatch():
    s = snap(subscriptions=[Pair(id="sub_1", local={"status": "active", "items": [{"id": "si"}]},
                                 stripe={"status": "active", "items": [{"id": "si"}]})],
             credits=CreditView(balance=500, ledger_sum=500, purchases=[Purchase(checkout_session_id="cs_1", credits=500,
                                                                                 granted=1, granted_amount=500)]),
             usage=Usage(period_start=date(2026, 11, 1), period_end=date(2026, 12, 1), through=date(2026, 11, 29),
                         meters=[MeterUsage(meter="api", ledger=Decimal(3), counter=Decimal(3))],
                         findings=[UsageFinding(key="k", kind="ok", meter="api")]))
    assert compare(s) == []


def test_every_differing_field_is_one_mismatch_with_both_values():
    s = snap(subscriptions=[Pair(id="sub_1", local={"status": "past_due", "cancel_at_period_end": False},
                                 stripe={"status": "active", "cancel_at_period_end": True})],
             invoices=[Pair(id="in_1", local={"status": "open", "amount_paid": 0},
                            stripe={"status": "paid", "amount_paid": 1000})])
    ms = compare(s)
    assert [(m.domain, m.entity, m.field, m.local, m.stripe) for m in ms] == [
        (Domain.SUBSCRIPTIONS, "sub_1", "status", "past_due", "active"),
        (Domain.SUBSCRIPTIONS, "sub_1", "cancel_at_period_end", False, True),
        (Domain.INVOICES, "in_1", "status", "open", "paid"),
        (Domain.INVOICES, "in_1", "amount_paid", 0, 1000),
    ]


def test_an_object_on_one_side_only_is_named_but_a_deleted_draft_is_not():
    s = snap(subscriptions=[Pair(id="sub_new", stripe={"status": "active"}), Pair(id="sub_ghost", local={"status": "trialing"})],
             invoices=[Pair(id="in_draft", local={"status": "deleted"})])
    ms = compare(s)
    assert [(m.entity, m.field, m.local, m.stripe, m.detail) for m in ms] == [
        ("sub_new", "exists", None, "present", "missing here"),
        ("sub_ghost", "exists", "present", None, "missing in Stripe"),
    ]


def test_customer_fields_mapping_and_deletion():
    theirs = {**CUS, "name": "Acme Inc", "customer_id": "other"}
    assert keys(snap(customer=Pair(id="acme", local=dict(CUS), stripe=theirs))) == [
        ("customer", "acme", "name"), ("customer", "acme", "customer_id")]
    # No metadata.customer_id in Stripe (linked with link_customer): the mapping is not compared.
    assert keys(snap(customer=Pair(id="acme", local=dict(CUS), stripe={**CUS, "customer_id": None}))) == []
    # Deleted in Stripe: only `deleted` compares (Stripe keeps no email or name).
    deleted = {"stripe_customer_id": "cus_A", "deleted": True}
    assert keys(snap(customer=Pair(id="acme", local=dict(CUS), stripe=deleted))) == [("customer", "acme", "deleted")]
    assert keys(snap(customer=Pair(id="cus_A", stripe=dict(CUS)), customer_id=None)) == [
        ("customer", "cus_A", "exists")]


def test_credits_balance_missing_duplicate_and_wrong_grants():
    cr = CreditView(balance=507, ledger_sum=500, invalid_purchases=["cs_bad: metadata.credits='x' is not an integer"],
                    purchases=[Purchase(checkout_session_id="cs_missing", credits=100),
                               Purchase(checkout_session_id="cs_twice", credits=200, granted=2, granted_amount=400),
                               Purchase(checkout_session_id="cs_wrong", credits=300, granted=1, granted_amount=30),
                               Purchase(checkout_session_id="cs_ok", credits=5, granted=1, granted_amount=5)])
    ms = compare(snap(credits=cr))
    assert [(m.entity, m.field, m.local, m.stripe) for m in ms] == [
        ("acme", "balance", 507, None), ("cs_missing", "grant", None, 100), ("cs_twice", "grant", 400, 200),
        ("cs_wrong", "grant", 30, 300), ("cs_bad", "metadata.credits", None, None)]
    assert "ledger sums to 500" in ms[0].detail and "granted 2 times" in ms[2].detail
    # A customer Postgres does not know has no balance to check.
    assert keys(snap(customer_id=None, credits=CreditView(balance=None, ledger_sum=0))) == []


def test_usage_findings_become_counter_and_stripe_mismatches():
    u = Usage(period_start=date(2026, 11, 1), period_end=date(2026, 12, 1), through=date(2026, 11, 29), findings=[
        UsageFinding(key="a", kind="counter_drift", meter="storage", period_start=date(2026, 11, 1),
                     ledger=Decimal("2.5"), counter=Decimal("7.50"), action="set_counter"),
        UsageFinding(key="b", kind="under_reported", meter="api", day=date(2026, 11, 29), ledger=Decimal(47),
                     stripe=Decimal("40.0"), pushed=Decimal(40), action="push_delta"),
        UsageFinding(key="c", kind="ok", meter="api", day=date(2026, 11, 28)),
        UsageFinding(key="d", kind="pending", meter="api", day=date(2026, 11, 27), ledger=Decimal(1), stripe=Decimal(0),
                     pushed=Decimal(1), detail="writes in flight may explain the difference"),
    ])
    ms = compare(snap(usage=u))
    assert [(m.entity, m.field, m.local, m.stripe) for m in ms] == [
        ("storage period 2026-11-01", "counter", "7.5", None), ("api 2026-11-29", "stripe", "47", "40"),
        ("api 2026-11-27", "stripe", "1", "0")]
    assert ms[0].detail == "counter_drift: the usage ledger sums to 2.5 -> set_counter"
    assert ms[1].detail == "under_reported: pushed 40 -> push_delta"
    assert "in flight" in ms[2].detail


@pytest.mark.parametrize("ref", ["acme", "cus_Q1w2E3", "cus-abc-0001", "user@example.com", "a" * 200])
def test_customer_ids_accepted(ref):
    assert InspectCustomerInput(customer=ref).customer == ref


@pytest.mark.parametrize(("ref", "says"), [
    ("", "blank"), ("   ", "blank"), ("a b", "spaces"), ("acme\n", "spaces"), ("a\x00b", "control"),
    ("cus_", "not a Stripe customer id"), ("cus_a-b", "not a Stripe customer id"), ("a" * 201, "longer than"),
])
def test_malformed_customer_ids_refused(ref, says):
    with pytest.raises(ValidationError, match=says):
        InspectCustomerInput(customer=ref)
    with pytest.raises(ValidationError, match=says):
        RepairCustomerInput(customer=ref)


def test_repair_refuses_plan_mode():
    with pytest.raises(ValidationError, match="dry-run and apply, not plan"):
        RepairCustomerInput(customer="acme", mode="plan")


def test_quantities_serialize_exactly():
    m = MeterUsage(meter="api", ledger=Decimal("40.000"), counter=Decimal("NaN"), pushed=Decimal("1E+1"))
    assert m.model_dump(mode="json") == {"meter": "api", "ledger": "40", "counter": "NaN", "quota": None,
                                         "pushed": "10", "stripe": None}
