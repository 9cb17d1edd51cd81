"""Object shapes (against Stripe's fixtures3.json) and the non-billing resources."""

from __future__ import annotations

import pytest
import stripe

from .helpers import assert_keys, make_customer, make_meter, push


async def _billing_setup(client):
    meter = await make_meter(client)
    product = await client.v1.products.create_async(params={"name": "API"})
    metered = await client.v1.prices.create_async(
        params={
            "currency": "usd",
            "unit_amount": 2,
            "product": product.id,
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    licensed = await client.v1.prices.create_async(
        params={
            "currency": "usd",
            "unit_amount": 1000,
            "product": product.id,
            "recurring": {"interval": "month"},
        }
    )
    return meter, product, metered, licensed


async def test_every_object_type_has_fixture_keys(client, admin, fixtures, receiver):
    meter, product, metered, licensed = await _billing_setup(client)
    cus = await make_customer(client)
    assert (
        cus.id.startswith("cus_")
        and product.id.startswith("prod_")
        and metered.id.startswith("price_")
    )
    assert metered.recurring.meter == meter.id and metered.recurring.usage_type == "metered"
    sub = await client.v1.subscriptions.create_async(
        params={
            "customer": cus.id,
            "items": [{"price": metered.id}, {"price": licensed.id, "quantity": 2}],
        }
    )
    item = sub["items"].data[0]
    assert sub.id.startswith("sub_") and item.id.startswith("si_")
    assert item.current_period_end > item.current_period_start
    invoice = await client.v1.invoices.retrieve_async(sub.latest_invoice)
    assert (
        invoice.id.startswith("in_") and invoice.parent.subscription_details.subscription == sub.id
    )
    assert "paid" not in invoice and invoice.status == "paid" and invoice.amount_paid == 2000
    ev = await push(client, cus.id, "3")
    now = await admin.now()
    summaries = await client.v1.billing.meters.event_summaries.list_async(
        meter.id,
        params={"customer": cus.id, "start_time": now - now % 60, "end_time": now - now % 60 + 60},
    )
    adj = await client.v1.billing.meter_event_adjustments.create_async(
        params={
            "event_name": meter.event_name,
            "type": "cancel",
            "cancel": {"identifier": ev.identifier},
        }
    )
    session = await client.v1.checkout.sessions.create_async(
        params={
            "mode": "subscription",
            "line_items": [{"price": licensed.id, "quantity": 1}],
            "success_url": "https://x",
        }
    )
    assert session.id.startswith("cs_test_")
    we = await client.v1.webhook_endpoints.create_async(
        params={"url": receiver.url, "enabled_events": ["*"]}
    )
    event = (await client.v1.events.list_async()).data[0]
    deleted = await client.v1.customers.delete_async((await make_customer(client)).id)
    draft = await client.v1.invoices.create_async(params={"customer": cus.id, "auto_advance": False})
    deleted_invoice = await client.v1.invoices.delete_async(draft.id)
    si = await client.v1.subscription_items.retrieve_async(item.id)
    objects = {
        "customer": cus,
        "product": product,
        "price": metered,
        "subscription": sub,
        "subscription_item": si,
        "invoice": invoice,
        "checkout.session": session,
        "webhook_endpoint": we,
        "event": event,
        "billing.meter": meter,
        "billing.meter_event": ev,
        "billing.meter_event_adjustment": adj,
        "billing.meter_event_summary": summaries.data[0],
        "deleted_customer": deleted,
        "deleted_invoice": deleted_invoice,
    }
    for kind, obj in objects.items():
        assert_keys(obj, fixtures[kind], kind)
    assert summaries.data[0].id.startswith("mtrusg_")
    for line in invoice.lines.data:
        assert set(fixtures["invoice"]["lines"]["data"][0]) <= set(line.to_dict())


async def test_customers_crud(client):
    cus = await client.v1.customers.create_async(
        params={"email": "a@b.io", "name": "A", "metadata": {"k": "v"}}
    )
    got = await client.v1.customers.retrieve_async(cus.id)
    assert got.email == "a@b.io" and got.metadata.to_dict() == {"k": "v"}
    upd = await client.v1.customers.update_async(cus.id, params={"metadata": {"k": "", "n": "1"}})
    assert upd.metadata.to_dict() == {"n": "1"}
    await client.v1.customers.delete_async(cus.id)
    gone = await client.v1.customers.retrieve_async(cus.id)
    assert gone.deleted is True
    assert (await client.v1.customers.list_async()).data == []


async def test_price_validation(client):
    product = await client.v1.products.create_async(params={"name": "X"})
    with pytest.raises(stripe.InvalidRequestError) as exc:
        await client.v1.prices.create_async(
            params={
                "currency": "usd",
                "unit_amount": 1,
                "product": product.id,
                "recurring": {"interval": "month", "usage_type": "metered"},
            }
        )
    assert exc.value.param == "recurring[meter]"
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.prices.create_async(
            params={
                "currency": "usd",
                "unit_amount": 1,
                "product": product.id,
                "recurring": {"interval": "month", "usage_type": "metered", "meter": "mtr_nope"},
            }
        )
    listed = await client.v1.prices.list_async(params={"product": product.id})
    assert listed.data == []


async def test_subscription_lifecycle(client, admin):
    _, _, metered, licensed = await _billing_setup(client)
    cus = await make_customer(client)
    sub = await client.v1.subscriptions.create_async(
        params={"customer": cus.id, "items": [{"price": licensed.id}], "metadata": {"plan": "pro"}}
    )
    assert sub.status == "active" and sub["items"].data[0].quantity == 1
    upd = await client.v1.subscriptions.update_async(
        sub.id, params={"cancel_at_period_end": True, "items": [{"price": metered.id}]}
    )
    assert upd.cancel_at_period_end is True and len(upd["items"].data) == 2
    items = await client.v1.subscription_items.list_async(params={"subscription": sub.id})
    assert {i.price.id for i in items.data} == {metered.id, licensed.id}
    assert [
        s.id for s in (await client.v1.subscriptions.list_async(params={"customer": cus.id})).data
    ] == [sub.id]
    assert (await client.v1.subscriptions.list_async(params={"status": "canceled"})).data == []
    canceled = await client.v1.subscriptions.cancel_async(sub.id)
    assert canceled.status == "canceled" and canceled.canceled_at is not None
    assert (await client.v1.subscriptions.list_async(params={"customer": cus.id})).data == []
    assert len((await client.v1.subscriptions.list_async(params={"status": "all"})).data) == 1
    types = [
        e.type
        for e in (
            await client.v1.events.list_async(params={"type": "customer.subscription.*"})
        ).data
    ]
    assert types == [
        "customer.subscription.deleted",
        "customer.subscription.updated",
        "customer.subscription.created",
    ]


async def test_subscription_renews_with_usage_invoice(client, admin):
    meter, _, metered, _ = await _billing_setup(client)
    cus = await make_customer(client)
    sub = await client.v1.subscriptions.create_async(
        params={"customer": cus.id, "items": [{"price": metered.id}]}
    )
    await push(client, cus.id, "21")
    end = sub["items"].data[0].current_period_end
    await admin.advance_clock(end - await admin.now() + 5)
    renewed = await client.v1.subscriptions.retrieve_async(sub.id)
    assert renewed["items"].data[0].current_period_start == end
    inv = await client.v1.invoices.retrieve_async(renewed.latest_invoice)
    # Stripe's finalization grace: a draft for an hour after the period, usage can still come.
    assert inv.billing_reason == "subscription_cycle" and inv.status == "draft"
    assert inv.automatically_finalizes_at == end + 3600 and inv.amount_due == 42
    assert inv.parent.subscription_details.subscription == sub.id
    await push(client, cus.id, "4", timestamp=end - 60)  # late usage inside the old period
    await admin.advance_clock(3600)
    inv = await client.v1.invoices.retrieve_async(inv.id)
    assert inv.status == "paid" and inv.amount_paid == 50
    assert inv.automatically_finalizes_at is None


async def test_invoice_lifecycle(client):
    cus = await make_customer(client)
    inv = await client.v1.invoices.create_async(params={"customer": cus.id, "auto_advance": False})
    assert inv.status == "draft"
    fin = await client.v1.invoices.finalize_invoice_async(inv.id, params={"auto_advance": False})
    assert fin.status == "open" and fin.number
    voided = await client.v1.invoices.void_invoice_async(inv.id)
    assert voided.status == "void"
    inv2 = await client.v1.invoices.create_async(params={"customer": cus.id, "auto_advance": False})
    paid = await client.v1.invoices.pay_async(inv2.id)
    assert paid.status == "paid" and paid.status_transitions.paid_at
    assert (
        len(
            (
                await client.v1.invoices.list_async(params={"customer": cus.id, "status": "paid"})
            ).data
        )
        == 1
    )
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.invoices.void_invoice_async(inv2.id)
    types = {e.type for e in (await client.v1.events.list_async(params={"type": "invoice.*"})).data}
    assert {"invoice.created", "invoice.finalized", "invoice.voided", "invoice.paid"} <= types


async def test_invoice_statuses_and_their_events(client):
    """Every invoice state change emits its event (FACTS: invoice.created, finalized, paid,
    payment_failed, voided, marked_uncollectible, updated, deleted for drafts), with
    `status_transitions`; statuses move draft -> open -> paid | void | uncollectible, and an
    uncollectible invoice can still be paid or voided."""
    cus = await make_customer(client)

    async def new_open() -> stripe.Invoice:
        inv = await client.v1.invoices.create_async(params={"customer": cus.id, "auto_advance": False})
        return await client.v1.invoices.finalize_invoice_async(inv.id, params={"auto_advance": False})

    draft = await client.v1.invoices.create_async(params={"customer": cus.id, "auto_advance": False})
    updated = await client.v1.invoices.update_async(
        draft.id, params={"description": "November", "metadata": {"po": "42"}})
    assert updated.description == "November" and updated.metadata["po"] == "42"
    gone = await client.v1.invoices.delete_async(draft.id)
    assert gone.deleted is True and gone.id == draft.id
    with pytest.raises(stripe.InvalidRequestError) as missing:
        await client.v1.invoices.retrieve_async(draft.id)
    assert missing.value.http_status == 404

    lost = await client.v1.invoices.mark_uncollectible_async((await new_open()).id)
    assert lost.status == "uncollectible" and lost.status_transitions.marked_uncollectible_at
    recovered = await client.v1.invoices.pay_async(lost.id)
    assert recovered.status == "paid" and recovered.status_transitions.paid_at and recovered.amount_remaining == 0
    written_off = await client.v1.invoices.mark_uncollectible_async((await new_open()).id)
    voided = await client.v1.invoices.void_invoice_async(written_off.id)
    assert voided.status == "void" and voided.status_transitions.voided_at
    assert voided.status_transitions.marked_uncollectible_at

    for refused in (client.v1.invoices.delete_async(voided.id),
                    client.v1.invoices.mark_uncollectible_async(recovered.id),
                    client.v1.invoices.void_invoice_async(recovered.id),
                    client.v1.invoices.update_async(voided.id, params={"collection_method": "send_invoice"})):
        with pytest.raises(stripe.InvalidRequestError):
            await refused

    events = (await client.v1.events.list_async(params={"type": "invoice.*", "limit": 100})).data
    by_object: dict[str, list[str]] = {}
    for e in reversed(events):  # oldest first
        by_object.setdefault(e.data.object.id, []).append(e.type)
    assert by_object[draft.id] == ["invoice.created", "invoice.updated", "invoice.deleted"]
    assert by_object[lost.id] == ["invoice.created", "invoice.finalized", "invoice.marked_uncollectible",
                                  "invoice.paid", "invoice.payment_succeeded"]
    assert by_object[voided.id] == ["invoice.created", "invoice.finalized", "invoice.marked_uncollectible",
                                    "invoice.voided"]
    update_event = next(e for e in events if e.type == "invoice.updated")
    assert update_event.data.previous_attributes.to_dict() == {"description": None, "metadata": {"po": None}}
    assert next(e for e in events if e.type == "invoice.voided").data.previous_attributes.status == "uncollectible"


async def test_checkout_complete_helper(client, admin):
    _, _, metered, licensed = await _billing_setup(client)
    session = await client.v1.checkout.sessions.create_async(
        params={
            "mode": "subscription",
            "customer_email": "buyer@x.io",
            "client_reference_id": "acct-42",
            "line_items": [{"price": licensed.id, "quantity": 1}, {"price": metered.id}],
            "success_url": "https://example.com/ok",
            "metadata": {"k": "v"},
        }
    )
    assert session.status == "open" and session.url and session.payment_status == "unpaid"
    await admin.reset_request_stats()
    done = await admin.complete_checkout_session(session.id)
    assert done["status"] == "complete" and done["payment_status"] == "paid"
    got = await client.v1.checkout.sessions.retrieve_async(session.id)
    assert got.subscription == done["subscription"] and got.customer.startswith("cus_")
    assert got.invoice and got.client_reference_id == "acct-42"
    sub = await client.v1.subscriptions.retrieve_async(got.subscription)
    assert sub.customer == got.customer and len(sub["items"].data) == 2
    types = [e.type for e in (await client.v1.events.list_async(params={"limit": 100})).data]
    for t in (
        "checkout.session.completed",
        "customer.subscription.created",
        "invoice.created",
        "invoice.paid",
        "customer.created",
    ):
        assert t in types
    assert types[0] == "checkout.session.completed"
    other = await client.v1.checkout.sessions.create_async(
        params={
            "mode": "subscription",
            "line_items": [{"price": licensed.id, "quantity": 1}],
            "success_url": "https://x",
        }
    )
    expired = await client.v1.checkout.sessions.expire_async(other.id)
    assert expired.status == "expired"
    listed = await client.v1.checkout.sessions.list_async(params={"status": "complete"})
    assert [s.id for s in listed.data] == [session.id]
    stats = await admin.request_stats()
    assert stats["GET /v1/checkout/sessions/{id}"] == 1
