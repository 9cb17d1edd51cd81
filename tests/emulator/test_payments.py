"""Money through the emulator as Stripe moves it: invoice items, invoice payments, charges,
refunds and balance transactions (shapes against fixtures3.json, list filters, errors, events)."""

from __future__ import annotations

import pytest
import stripe

from .helpers import assert_keys, make_customer


async def _invoice(client, customer: str, amount: int) -> str:
    inv = await client.v1.invoices.create_async(params={"customer": customer, "auto_advance": False})
    await client.v1.invoice_items.create_async(params={"customer": customer, "invoice": inv.id, "amount": amount})
    return inv.id


async def test_a_paid_invoice_moves_money_and_a_refund_moves_it_back(client, admin, fixtures):
    cus = await make_customer(client)
    inv_id = await _invoice(client, cus.id, 2500)
    inv = await client.v1.invoices.finalize_invoice_async(inv_id, params={"auto_advance": False})
    assert (inv.status, inv.amount_due, inv.total, len(inv.lines.data)) == ("open", 2500, 2500, 1)
    [payment] = (await client.v1.invoice_payments.list_async(params={"invoice": inv_id})).data
    assert (payment.status, payment.amount_requested, payment.amount_paid, payment.is_default) == (
        "open", 2500, None, True)

    inv = await client.v1.invoices.pay_async(inv_id)
    payment = await client.v1.invoice_payments.retrieve_async(payment.id)
    assert (payment.status, payment.amount_paid, payment.payment.type) == ("paid", 2500, "charge")
    assert payment.status_transitions.paid_at == inv.status_transitions.paid_at
    charge = await client.v1.charges.retrieve_async(payment.payment.charge)
    [txn] = (await client.v1.balance_transactions.list_async(params={"source": charge.id})).data
    assert (charge.amount, charge.status, charge.customer, txn.id) == (2500, "succeeded", cus.id,
                                                                      charge.balance_transaction)
    assert (txn.type, txn.amount, txn.fee, txn.net, txn.reporting_category) == ("charge", 2500, 0, 2500, "charge")

    refund = await client.v1.refunds.create_async(params={"charge": charge.id, "amount": 1000})
    charge = await client.v1.charges.retrieve_async(charge.id)
    assert (refund.status, refund.amount, charge.amount_refunded, charge.refunded) == ("succeeded", 1000, 1000, False)
    back = await client.v1.balance_transactions.retrieve_async(refund.balance_transaction)
    assert (back.type, back.amount, back.net, back.source) == ("refund", -1000, -1000, refund.id)
    # Refunding a charge leaves its invoice paid, as in Stripe.
    assert (await client.v1.invoices.retrieve_async(inv_id)).status == "paid"
    rest = await client.v1.refunds.create_async(params={"charge": charge.id})
    assert rest.amount == 1500 and (await client.v1.charges.retrieve_async(charge.id)).refunded
    with pytest.raises(stripe.InvalidRequestError) as e:
        await client.v1.refunds.create_async(params={"charge": charge.id})
    assert e.value.code == "charge_already_refunded"

    types = [e.type for e in (await client.v1.events.list_async(params={"limit": 100})).data]
    assert types.count("refund.created") == 2 and types.count("charge.refunded") == 2
    for obj, kind in ((payment, "invoice_payment"), (charge, "charge"), (refund, "refund"),
                      (txn, "balance_transaction")):
        assert_keys(obj, fixtures[kind], kind)
    item = (await client.v1.invoice_items.create_async(params={"customer": cus.id, "amount": 5}))
    assert_keys(item, fixtures["invoiceitem"], "invoiceitem")


async def test_out_of_band_and_void_move_no_money(client):
    cus = await make_customer(client)
    oob, void = await _invoice(client, cus.id, 700), await _invoice(client, cus.id, 900)
    inv = await client.v1.invoices.pay_async(oob, params={"paid_out_of_band": True})
    assert (inv.status, inv.amount_paid) == ("paid", 700)
    await client.v1.invoices.finalize_invoice_async(void, params={"auto_advance": False})
    await client.v1.invoices.void_invoice_async(void)
    payments = (await client.v1.invoice_payments.list_async()).data
    assert {p.invoice: p.status for p in payments} == {oob: "canceled", void: "canceled"}
    assert all(p.status_transitions.canceled_at for p in payments)
    assert (await client.v1.balance_transactions.list_async()).data == []
    assert (await client.v1.charges.list_async()).data == []
    assert (await client.v1.invoice_payments.list_async(params={"status": "paid"})).data == []


async def test_lists_filter_by_created_and_page(client, admin):
    cus = await make_customer(client)
    first = await _invoice(client, cus.id, 100)
    await client.v1.invoices.pay_async(first)
    t0 = (await client.v1.invoices.retrieve_async(first)).created
    await admin.advance_clock(3600)
    for _ in range(3):
        await client.v1.invoices.pay_async(await _invoice(client, cus.id, 100))
    later = {"created": {"gte": t0 + 3600}}
    assert len((await client.v1.balance_transactions.list_async(params=later)).data) == 3
    assert len((await client.v1.invoice_payments.list_async(params={**later, "status": "paid"})).data) == 3
    assert len((await client.v1.balance_transactions.list_async(params={"created": {"lt": t0 + 1}})).data) == 1
    page = await client.v1.balance_transactions.list_async(params={"limit": 2})
    assert page.has_more and len(page.data) == 2
    rest = await client.v1.balance_transactions.list_async(params={"limit": 2, "starting_after": page.data[-1].id})
    assert not rest.has_more and len(rest.data) == 2
    ids = [t.id async for t in (await client.v1.balance_transactions.list_async(params={"limit": 1})).auto_paging_iter()]
    assert len(set(ids)) == 4


async def test_bad_requests_are_refused_as_stripe_does(client):
    cus = await make_customer(client)
    inv = await _invoice(client, cus.id, 100)
    await client.v1.invoices.finalize_invoice_async(inv, params={"auto_advance": False})
    with pytest.raises(stripe.InvalidRequestError) as e:
        await client.v1.invoice_items.create_async(params={"customer": cus.id, "invoice": inv, "amount": 1})
    assert e.value.code == "invoice_not_editable"
    with pytest.raises(stripe.InvalidRequestError) as e:
        await client.v1.refunds.create_async(params={"charge": "ch_nope"})
    assert e.value.code == "resource_missing" and e.value.param == "charge"
    with pytest.raises(stripe.InvalidRequestError) as e:
        await client.v1.invoice_payments.list_async(params={"status": "settled"})
    assert e.value.param == "status"
