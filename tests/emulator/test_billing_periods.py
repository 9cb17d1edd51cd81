"""Billing periods in the emulator: anchors, the finalization grace, tiered prices, pending
invoice items on the next invoice, credit notes and customer balance transactions."""

from __future__ import annotations

import pytest
import stripe

from .helpers import make_customer, make_meter, push

DAY = 86400


def has_fixture_keys(obj, fixture: dict) -> None:
    missing = set(fixture) - set(obj.to_dict())
    assert not missing, f"lacks {sorted(missing)}"


async def _price(client, meter, **price):
    product = await client.v1.products.create_async(params={"name": "API"})
    return await client.v1.prices.create_async(params={
        "currency": "usd", "product": product.id,
        "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id}, **price})


GRADUATED = {"billing_scheme": "tiered", "tiers_mode": "graduated", "tiers": [
    {"up_to": 1000, "unit_amount": 2}, {"up_to": "inf", "unit_amount_decimal": "0.5", "flat_amount": 100}]}


async def _renew(client, admin, sub):
    end = sub["items"].data[0].current_period_end
    await admin.advance_clock(end - await admin.now() + 1)
    return end, await client.v1.subscriptions.retrieve_async(sub.id)


async def test_anchored_subscription_first_period_ends_at_the_anchor(client, admin):
    meter = await make_meter(client)
    price = await _price(client, meter, unit_amount=3)
    cus = await make_customer(client)
    anchor = await admin.now() + 10 * DAY
    sub = await client.v1.subscriptions.create_async(
        params={"customer": cus.id, "items": [{"price": price.id}], "billing_cycle_anchor": anchor})
    assert sub.billing_cycle_anchor == anchor and sub["items"].data[0].current_period_end == anchor
    end, renewed = await _renew(client, admin, sub)
    item = renewed["items"].data[0]
    assert item.current_period_start == anchor and item.current_period_end - anchor in (
        28 * DAY, 29 * DAY, 30 * DAY, 31 * DAY)
    with pytest.raises(stripe.InvalidRequestError, match="cannot be in the past"):
        await client.v1.subscriptions.create_async(params={
            "customer": cus.id, "items": [{"price": price.id}], "billing_cycle_anchor": anchor - 20 * DAY})


async def test_usage_in_the_grace_lands_on_the_draft_then_it_finalizes(client, admin):
    meter = await make_meter(client)
    price = await _price(client, meter, **GRADUATED)
    cus = await make_customer(client)
    sub = await client.v1.subscriptions.create_async(params={"customer": cus.id, "items": [{"price": price.id}]})
    await push(client, cus.id, "900")
    end, renewed = await _renew(client, admin, sub)
    draft = await client.v1.invoices.retrieve_async(renewed.latest_invoice)
    assert draft.status == "draft" and draft.automatically_finalizes_at == end + 3600
    assert draft.amount_due == 1800  # 900 x 2
    await push(client, cus.id, "300", timestamp=end - 1)  # during the grace, inside the old period
    await push(client, cus.id, "50")  # the new period
    await admin.advance_clock(3600)
    inv = await client.v1.invoices.retrieve_async(draft.id)
    # graduated: 1000 x 2 + 200 x 0.5 + 100 flat
    assert inv.status == "paid" and inv.amount_paid == 2200 and inv.lines.data[0].quantity == 1200
    types = [e.type for e in (await client.v1.events.list_async(params={"type": "invoice.*"})).data]
    assert "invoice.created" in types and "invoice.finalized" in types


async def test_volume_price_and_price_errors(client, admin):
    meter = await make_meter(client)
    volume = await _price(client, meter, billing_scheme="tiered", tiers_mode="volume", tiers=[
        {"up_to": 100, "unit_amount": 10}, {"up_to": "inf", "unit_amount": 7}])
    assert volume.tiers_mode == "volume" and volume.tiers[1].up_to is None
    cus = await make_customer(client)
    sub = await client.v1.subscriptions.create_async(params={"customer": cus.id, "items": [{"price": volume.id}]})
    await push(client, cus.id, "150")
    _, renewed = await _renew(client, admin, sub)
    assert (await client.v1.invoices.retrieve_async(renewed.latest_invoice)).amount_due == 1050
    with pytest.raises(stripe.InvalidRequestError, match="tiers_mode"):
        await _price(client, meter, billing_scheme="tiered", tiers=GRADUATED["tiers"])
    with pytest.raises(stripe.InvalidRequestError, match="last tier"):
        await _price(client, meter, billing_scheme="tiered", tiers_mode="graduated",
                     tiers=[{"up_to": 10, "unit_amount": 1}])


async def test_pending_invoice_item_goes_on_the_next_invoice(client, admin):
    meter = await make_meter(client)
    price = await _price(client, meter, unit_amount=2)
    cus = await make_customer(client)
    sub = await client.v1.subscriptions.create_async(params={"customer": cus.id, "items": [{"price": price.id}]})
    item = await client.v1.invoice_items.create_async(
        params={"customer": cus.id, "amount": 250, "currency": "usd", "description": "adjustment"})
    assert item.invoice is None
    pending = await client.v1.invoice_items.list_async(params={"customer": cus.id, "pending": True})
    assert [i.id for i in pending.data] == [item.id]
    _, renewed = await _renew(client, admin, sub)
    draft = await client.v1.invoices.retrieve_async(renewed.latest_invoice)
    assert draft.amount_due == 250
    assert (await client.v1.invoice_items.retrieve_async(item.id)).invoice == draft.id
    assert (await client.v1.invoice_items.list_async(params={"customer": cus.id, "pending": True})).data == []


async def test_anchor_reset_invoices_the_partial_period(client, admin):
    meter = await make_meter(client)
    price = await _price(client, meter, unit_amount=2)
    cus = await make_customer(client)
    sub = await client.v1.subscriptions.create_async(params={"customer": cus.id, "items": [{"price": price.id}]})
    await push(client, cus.id, "5")
    await admin.advance_clock(5 * DAY)
    now = await admin.now()
    reset = await client.v1.subscriptions.update_async(sub.id, params={"billing_cycle_anchor": "now"})
    assert reset.billing_cycle_anchor == now and reset["items"].data[0].current_period_start == now
    inv = await client.v1.invoices.retrieve_async(reset.latest_invoice)
    assert inv.status == "draft" and inv.period_end == now and inv.amount_due == 10


async def test_credit_notes(client, admin, fixtures):
    meter = await make_meter(client)
    price = await _price(client, meter, unit_amount=2)
    cus = await make_customer(client)
    sub = await client.v1.subscriptions.create_async(params={"customer": cus.id, "items": [{"price": price.id}]})
    await push(client, cus.id, "100")
    _, renewed = await _renew(client, admin, sub)
    draft_id = renewed.latest_invoice
    with pytest.raises(stripe.InvalidRequestError, match="finalized"):
        await client.v1.credit_notes.create_async(params={"invoice": draft_id, "amount": 10})
    await admin.advance_clock(3600)
    inv = await client.v1.invoices.retrieve_async(draft_id)
    assert inv.status == "paid" and inv.amount_paid == 200
    with pytest.raises(stripe.InvalidRequestError, match="less than or equal"):
        await client.v1.credit_notes.create_async(params={"invoice": inv.id, "amount": 201})
    cn = await client.v1.credit_notes.create_async(params={
        "invoice": inv.id, "reason": "order_change", "memo": "over-billed",
        "lines": [{"type": "custom_line_item", "unit_amount": 2, "quantity": 30, "description": "30 calls"}]})
    has_fixture_keys(cn, fixtures["credit_note"])
    assert cn.total == 60 and cn.type == "post_payment" and cn.customer_balance_transaction
    assert (await client.v1.customers.retrieve_async(cus.id)).balance == -60
    with pytest.raises(stripe.InvalidRequestError, match=r"\(140\)"):
        await client.v1.credit_notes.create_async(params={"invoice": inv.id, "amount": 141})
    listed = await client.v1.credit_notes.list_async(params={"invoice": inv.id})
    assert [c.id for c in listed.data] == [cn.id]


async def test_customer_balance_transactions(client, fixtures):
    cus = await make_customer(client)
    txn = await client.v1.customers.balance_transactions.create_async(
        cus.id, params={"amount": -500, "currency": "usd", "description": "credit"})
    has_fixture_keys(txn, fixtures["customer_balance_transaction"])
    assert txn.ending_balance == -500 and txn.type == "adjustment"
    await client.v1.customers.balance_transactions.create_async(cus.id, params={"amount": 200, "currency": "usd"})
    assert (await client.v1.customers.retrieve_async(cus.id)).balance == -300
    listed = await client.v1.customers.balance_transactions.list_async(cus.id)
    assert [t.amount for t in listed.data] == [200, -500]
    with pytest.raises(stripe.InvalidRequestError, match="currency"):
        await client.v1.customers.balance_transactions.create_async(cus.id, params={"amount": 1, "currency": "eur"})
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.customers.balance_transactions.create_async(cus.id, params={"currency": "usd"})
