"""Pure parts of the resync family: input validation, count merging, field comparison."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from billing.stripe_objects import (
    INVOICE_DELETED,
    InvoiceRow,
    SubscriptionRow,
    invoice_row,
    subscription_row,
)
from common.paged import MAX_SAMPLE
from common.types import Mode
from credits.types import AdjustCreditsInput, RepairCreditsInput
from resync.mirror import differing_fields
from resync.types import ResyncCounts, ResyncFindings, ResyncSubscriptionsInput


def test_plan_mode_is_refused():
    with pytest.raises(ValueError, match="not plan"):
        ResyncSubscriptionsInput(mode=Mode.PLAN)
    with pytest.raises(ValueError, match="not plan"):
        RepairCreditsInput(mode=Mode.PLAN)


def test_manual_sync_needs_a_customer():
    with pytest.raises(ValueError, match="needs a customer"):
        ResyncSubscriptionsInput(mode=Mode.APPLY, manual=True)


@pytest.mark.parametrize("kw,message", [
    ({"amount": 0}, "amount must not be 0"),
    ({"reason": "  "}, "reason must not be blank"),
    ({"customer": ""}, "at least 1 character"),
])
def test_adjustment_validation(kw, message):
    base = {"customer": "acme", "amount": 5, "reason": "why", "actor": "alice"}
    with pytest.raises(ValueError, match=message):
        AdjustCreditsInput(**(base | kw))


def test_counts_add_merges_fields_and_findings_are_capped():
    a = ResyncCounts(compared=2, fields={"status": 1})
    b = ResyncCounts(compared=3, fields={"status": 2, "items": 1})
    total = a.add(b)
    assert total.compared == 5 and total.fields == {"status": 3, "items": 1}
    assert a.fields == {"status": 1}  # inputs untouched
    many = ResyncFindings(mismatched=[str(i) for i in range(MAX_SAMPLE)])
    assert len(many.merge(ResyncFindings(mismatched=["x"])).mismatched) == MAX_SAMPLE


def test_differing_fields_uses_the_webhook_mapping():
    start, end = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp()), int(datetime(2026, 12, 1, tzinfo=UTC).timestamp())
    sub = {"object": "subscription", "id": "sub_1", "customer": "cus_1", "status": "active",
           "items": {"data": [{"id": "si_1", "price": {"id": "price_1"}, "quantity": 2,
                               "current_period_start": start, "current_period_end": end}]}}
    stripe = subscription_row(sub).compared()
    fields = SubscriptionRow.COMPARED
    assert differing_fields(stripe, dict(stripe), fields) == []
    local = dict(stripe, status="past_due", items=[dict(stripe["items"][0], quantity=1)])
    assert differing_fields(stripe, local, fields) == ["status", "items"]


def test_invoice_mapping_follows_the_lifecycle():
    """status_transitions, amounts and a deleted draft, as the mirror and the resync compare them."""
    at = int(datetime(2026, 11, 3, tzinfo=UTC).timestamp())
    inv = {"object": "invoice", "id": "in_1", "customer": "cus_1", "status": "void", "number": "EMU-0001",
           "total": 900, "amount_due": 900, "amount_paid": 0, "amount_remaining": 900, "currency": "usd",
           "status_transitions": {"finalized_at": at, "voided_at": at + 60, "paid_at": None,
                                  "marked_uncollectible_at": None}}
    row = invoice_row(inv)
    assert (row.finalized_at, row.voided_at, row.paid_at) == (
        datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 3, 0, 1, tzinfo=UTC), None)
    assert row.compared()["voided_at"] == "2026-11-03T00:01:00+00:00" and row.compared()["deleted_at"] is None
    gone = invoice_row(dict(inv, status="draft")).deleted(datetime(2026, 11, 4, tzinfo=UTC))
    assert (gone.status, gone.deleted_at) == (INVOICE_DELETED, datetime(2026, 11, 4, tzinfo=UTC))
    assert differing_fields(row.compared(), gone.compared(), InvoiceRow.COMPARED) == ["status", "deleted_at"]
