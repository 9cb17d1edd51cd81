"""Invoices: ``/v1/invoices`` (create, update, delete a draft, finalize, pay, void, mark
uncollectible), the invoice a subscription gets at creation and at each renewal (metered lines
priced from the meter's usage), and the ``fail_invoice_payment`` test helper.

Every state change emits its event, as Stripe does: ``invoice.created``, ``invoice.updated``
(with ``previous_attributes``), ``invoice.deleted`` (drafts only; the invoice is gone: a retrieve
answers 404), ``invoice.finalized``, ``invoice.paid`` (+ ``invoice.payment_succeeded``),
``invoice.payment_failed``, ``invoice.voided`` and ``invoice.marked_uncollectible``. Statuses
move as in Stripe: draft -> open -> paid | void | uncollectible; an uncollectible invoice can
still be paid or voided; paid and void are final."""

from __future__ import annotations

from typing import Any

from ..errors import StripeError, invalid, missing
from ..params import paginate, to_bool
from ..state import RequestContext, Store, new_id, snapshot
from .base import (
    Params,
    Route,
    created_filter,
    diff_previous,
    merge_metadata,
    public,
    reported_usage,
    retrieve,
    set_fields,
)
from .charges import create_charge
from .invoice_payments import cancel_default_payment, open_default_payment, settle_default_payment
from .invoiceitems import attach_pending_items
from .prices import price_amount


def create_invoice(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    customer = p.get("customer")
    sub_id = p.get("subscription")
    if sub_id:
        sub = s.col("subscription").get(sub_id, param="subscription", status=400)
        customer = customer or sub["customer"]
    if not customer:
        raise missing("customer")
    s.col("customer").get(customer, param="customer", status=400)
    now = s.now()
    inv = new_invoice(s, customer, sub_id, "manual", [], (now, now), p.get("currency") or "usd", p)
    s.col("invoice").add(inv)
    s.emit("invoice.created", inv, ctx)
    return inv


def finalize_invoice(s: Store, ctx: RequestContext | None, p: Params, id: str) -> dict[str, Any]:
    inv = s.col("invoice").get(id)
    finalize(s, ctx, inv)
    if inv["amount_due"] == 0 and to_bool(
        p.get("auto_advance", inv["auto_advance"]), "auto_advance"
    ):
        pay(s, ctx, inv)
    return inv


# What ``POST /v1/invoices/{id}`` changes (monetary fields come from lines, not from here).
INVOICE_FIELDS = ("description", "footer", "statement_descriptor")
DRAFT_ONLY_FIELDS = ("collection_method",)


def update_invoice(s: Store, ctx: RequestContext | None, p: Params, id: str) -> dict[str, Any]:
    """Stripe: a draft is fully editable; a finalized invoice keeps its collection method (and
    amounts). ``invoice.updated`` carries ``previous_attributes`` when something changed."""
    inv = s.col("invoice").get(id)
    if inv["status"] != "draft":
        for k in DRAFT_ONLY_FIELDS:
            if k in p:
                raise invalid(
                    f"You can only update `{k}` on a draft invoice; this invoice is {inv['status']}.",
                    k,
                )
    before = snapshot(inv)
    set_fields(inv, p, INVOICE_FIELDS + DRAFT_ONLY_FIELDS, flags=("auto_advance",))
    if "due_date" in p:
        inv["due_date"] = int(p["due_date"]) if p["due_date"] else None
    prev = diff_previous(before, inv)
    if prev:
        s.emit("invoice.updated", inv, ctx, prev)
    return inv


def delete_invoice(s: Store, ctx: RequestContext | None, p: Params, id: str) -> dict[str, Any]:
    """Only a draft can be deleted (a finalized invoice is voided instead)."""
    inv = s.col("invoice").get(id)
    if inv["status"] != "draft":
        raise StripeError(
            400,
            f"You can only delete draft invoices; this invoice is {inv['status']}. "
            "Void a finalized invoice instead.",
            code="invoice_not_editable",
        )
    del s.col("invoice").objects[id]
    s.emit("invoice.deleted", inv, ctx)
    return {"id": id, "object": "invoice", "deleted": True}


def mark_uncollectible(s: Store, ctx: RequestContext | None, p: Params, id: str) -> dict[str, Any]:
    inv = s.col("invoice").get(id)
    if inv["status"] != "open":
        raise StripeError(
            400,
            f"You can only mark an open invoice as uncollectible; this invoice is {inv['status']}.",
            code="invoice_unexpected_state",
        )
    inv["status"] = "uncollectible"
    inv["status_transitions"]["marked_uncollectible_at"] = s.now()
    s.emit("invoice.marked_uncollectible", inv, ctx, {"status": "open"})
    return inv


def pay_invoice(s: Store, ctx: RequestContext | None, p: Params, id: str) -> dict[str, Any]:
    inv = s.col("invoice").get(id)
    out_of_band = to_bool(p.get("paid_out_of_band", False), "paid_out_of_band")
    if inv["status"] == "draft":
        finalize(s, ctx, inv)
    pay(s, ctx, inv, out_of_band=out_of_band)
    return inv


def void_invoice(s: Store, ctx: RequestContext | None, p: Params, id: str) -> dict[str, Any]:
    inv = s.col("invoice").get(id)
    if inv["status"] not in VOIDABLE:
        raise StripeError(
            400,
            f"You can only void an open or uncollectible invoice; this invoice is {inv['status']}.",
            code="invoice_unexpected_state",
        )
    prev = {"status": inv["status"]}
    inv["status"] = "void"
    inv["status_transitions"]["voided_at"] = s.now()
    cancel_default_payment(s, inv)
    s.emit("invoice.voided", inv, ctx, prev)
    return inv


def list_invoices(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    customer, sub_id, status = p.get("customer"), p.get("subscription"), p.get("status")
    cf = created_filter(p)

    def pred(o):
        return (
            (customer is None or o["customer"] == customer)
            and (sub_id is None or _subscription_id(o) == sub_id)
            and (status is None or o["status"] == status)
            and cf(o)
        )

    return paginate(s.col("invoice").newest_first(pred), p, "/v1/invoices", "invoice")


def new_invoice(
    s: Store, customer_id, sub_id, reason, lines, period, currency="usd", p: Params | None = None
):
    p = p or {}
    cust = s.col("customer").objects.get(customer_id, {})
    total = sum(line["amount"] for line in lines)
    now = s.now()
    inv_id = new_id("in_", 24)
    for line in lines:
        line["invoice"] = inv_id
    return {
        "id": inv_id,
        "object": "invoice",
        "account_country": "US",
        "account_name": "Stripe Emulator",
        "account_tax_ids": None,
        "amount_due": total,
        "amount_overpaid": 0,
        "amount_paid": 0,
        "amount_remaining": total,
        "amount_shipping": 0,
        "application": None,
        "attempt_count": 0,
        "attempted": False,
        "auto_advance": to_bool(p.get("auto_advance", sub_id is not None), "auto_advance"),
        "automatic_tax": {
            "disabled_reason": None,
            "enabled": False,
            "liability": None,
            "provider": None,
            "status": None,
        },
        "automatically_finalizes_at": None,
        "billing_reason": reason,
        "collection_method": p.get("collection_method", "charge_automatically"),
        "created": now,
        "currency": (p.get("currency") or currency or "usd").lower(),
        "custom_fields": None,
        "customer": customer_id,
        "customer_account": None,
        "customer_address": cust.get("address"),
        "customer_email": cust.get("email"),
        "customer_name": cust.get("name"),
        "customer_phone": cust.get("phone"),
        "customer_shipping": cust.get("shipping"),
        "customer_tax_exempt": cust.get("tax_exempt", "none"),
        "customer_tax_ids": [],
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": p.get("description"),
        "discounts": [],
        "due_date": None,
        "effective_at": None,
        "ending_balance": None,
        "footer": None,
        "from_invoice": None,
        "hosted_invoice_url": None,
        "invoice_pdf": None,
        "issuer": {"type": "self"},
        "last_finalization_error": None,
        "latest_revision": None,
        "lines": {
            "object": "list",
            "data": lines,
            "has_more": False,
            "total_count": len(lines),
            "url": f"/v1/invoices/{inv_id}/lines",
        },
        "livemode": False,
        "metadata": merge_metadata({}, p.get("metadata")),
        "next_payment_attempt": None,
        "number": None,
        "on_behalf_of": None,
        "parent": (
            {
                "quote_details": None,
                "subscription_details": {"metadata": None, "subscription": sub_id},
                "type": "subscription_details",
            }
            if sub_id
            else None
        ),
        "payment_settings": {
            "default_mandate": None,
            "payment_method_options": None,
            "payment_method_types": None,
        },
        "period_end": period[1],
        "period_start": period[0],
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "receipt_number": None,
        "rendering": None,
        "shipping_cost": None,
        "shipping_details": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "status": "draft",
        "status_transitions": {
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        "subscription": None,  # removed in basil; kept null (the key exists in Stripe's fixture)
        "subtotal": total,
        "subtotal_excluding_tax": total,
        "test_clock": None,
        "total": total,
        "total_discount_amounts": [],
        "total_excluding_tax": total,
        "total_pretax_credit_amounts": [],
        "total_taxes": [],
        "webhooks_delivered_at": now,
    }


def finalize(s: Store, ctx: RequestContext | None, inv: dict[str, Any]) -> None:
    if inv["status"] != "draft":
        raise StripeError(
            400, "This invoice is already finalized, you can't re-finalize a non-draft invoice."
        )
    prev = {"status": "draft", "number": None}
    cust = s.col("customer").objects.get(inv["customer"], {})
    seq = cust.get("next_invoice_sequence", 1)
    if cust:
        cust["next_invoice_sequence"] = seq + 1
    now = s.now()
    inv["status"] = "open"
    inv["number"] = f"{cust.get('invoice_prefix', 'EMU')}-{seq:04d}"
    inv["effective_at"] = now
    inv["status_transitions"]["finalized_at"] = now
    inv["hosted_invoice_url"] = f"https://invoice.stripe.com/i/emulator/{inv['id']}"
    inv["invoice_pdf"] = f"https://pay.stripe.com/invoice/emulator/{inv['id']}/pdf"
    open_default_payment(s, inv)
    s.emit("invoice.finalized", inv, ctx, prev)


# Finalized invoices that can still be paid or voided (Stripe: an uncollectible invoice can be).
VOIDABLE = PAYABLE = ("open", "uncollectible")


def pay(
    s: Store, ctx: RequestContext | None, inv: dict[str, Any], out_of_band: bool = False
) -> None:
    """Pay an open (or uncollectible) invoice: by a charge through Stripe (its balance
    transaction and the default invoice payment), or out of band (no money through Stripe)."""
    if inv["status"] not in PAYABLE:
        raise StripeError(
            400, f"Invoice is already {inv['status']}.", code="invoice_unexpected_state"
        )
    prev = {
        "status": inv["status"],
        "amount_paid": inv["amount_paid"],
        "amount_remaining": inv["amount_remaining"],
    }
    now = s.now()
    inv["status"] = "paid"
    inv["attempted"] = True
    inv["attempt_count"] += 1
    inv["amount_paid"] = inv["amount_due"]
    inv["amount_remaining"] = 0
    inv["status_transitions"]["paid_at"] = now
    charge = None
    if not out_of_band and inv["amount_paid"] > 0:
        charge = create_charge(
            s, inv["customer"], inv["amount_paid"], inv["currency"], f"Invoice {inv['number']}"
        )
    settle_default_payment(s, inv, charge["id"] if charge else None)
    s.emit("invoice.paid", inv, ctx, prev)
    s.emit("invoice.payment_succeeded", inv, ctx)
    # Paying the overdue invoice brings a past_due subscription back to active, as in Stripe.
    _move_subscription(s, ctx, inv, ("past_due",), "active")


def fail_invoice_payment(s: Store, ctx: RequestContext | None, id: str) -> dict[str, Any]:
    """Test helper: a payment attempt on an open invoice was declined. As Stripe does, the invoice
    stays open with one more attempt, `invoice.payment_failed` is sent, and an active subscription
    billed by it becomes `past_due`."""
    inv = s.col("invoice").get(id)
    if inv["status"] == "draft":
        finalize(s, ctx, inv)
    if inv["status"] != "open":
        raise StripeError(
            400, f"Invoice is already {inv['status']}.", code="invoice_unexpected_state"
        )
    inv["attempted"] = True
    inv["attempt_count"] += 1
    s.emit("invoice.payment_failed", inv, ctx)
    _move_subscription(s, ctx, inv, ("active", "trialing"), "past_due")
    return inv


def _subscription_id(inv: dict[str, Any]) -> str | None:
    return ((inv.get("parent") or {}).get("subscription_details") or {}).get("subscription")


def _move_subscription(
    s: Store, ctx: RequestContext | None, inv: dict[str, Any], when: tuple[str, ...], to: str
) -> None:
    """The subscription ``inv`` bills, if its status is one of ``when``, becomes ``to``."""
    sub_id = _subscription_id(inv)
    sub = s.col("subscription").objects.get(sub_id) if sub_id else None
    if sub is not None and sub["status"] in when:
        before = snapshot(public(sub))
        sub["status"] = to
        s.emit(
            "customer.subscription.updated", public(sub), ctx, diff_previous(before, public(sub))
        )


def subscription_invoice(
    s: Store,
    ctx: RequestContext | None,
    sub: dict[str, Any],
    reason: str,
    period: tuple[int, int],
    usage: bool = False,
) -> dict[str, Any]:
    """The invoice of a subscription. At creation (``usage`` False) it is finalized and paid at
    once (the charge succeeds in the emulator). At a renewal (``usage`` True) it bills the
    period that ended: it is created as a **draft** holding the customer's pending invoice
    items, and finalized by ``finalize_due_invoices`` once its ``automatically_finalizes_at``
    (period end + ``invoice_finalization_grace_seconds``, Stripe's default 1 h) has passed; its
    metered lines take the meter's usage in the period at that moment, as in Stripe."""
    lines = []
    for iid in sub["_item_ids"]:
        it = s.col("subscription_item").objects[iid]
        price = it["price"]
        if (price["recurring"] or {}).get("usage_type") == "metered":
            continue
        qty = it["quantity"] or 1
        lines.append(invoice_line(s, price, qty, price_amount(price, qty), period, sub["id"], it["id"], False))
    inv = new_invoice(s, sub["customer"], sub["id"], reason, lines, period, sub["currency"])
    if usage:
        inv["_metered"] = [
            iid
            for iid in sub["_item_ids"]
            if (s.col("subscription_item").objects[iid]["price"]["recurring"] or {}).get("usage_type")
            == "metered"
        ]
        inv["automatically_finalizes_at"] = period[1] + int(s.config.invoice_finalization_grace_seconds)
        _price_usage(s, inv)
        attach_pending_items(s, inv)
    s.col("invoice").add(inv)
    s.emit("invoice.created", public(inv), ctx)
    if not usage:
        finalize(s, ctx, inv)
        pay(s, ctx, inv)
    return inv


def _price_usage(s: Store, inv: dict[str, Any]) -> None:
    """(Re)price the metered lines of a renewal draft from the meters' usage in its period."""
    old = set(inv.get("_usage_lines") or ())
    keep = [line for line in inv["lines"]["data"] if line["id"] not in old]
    inv["_usage_lines"] = []
    period = (inv["period_start"], inv["period_end"])
    sub_id = _subscription_id(inv)
    for iid in inv.get("_metered") or []:
        it = s.col("subscription_item").objects.get(iid)
        if it is None:
            continue
        price = it["price"]
        meter = s.col("billing.meter").objects.get(price["recurring"]["meter"])
        qty = reported_usage(s, meter, inv["customer"], *period) if meter is not None else 0.0
        line = invoice_line(s, price, qty, price_amount(price, qty), period, sub_id, iid, True)
        line["invoice"] = inv["id"]
        inv["_usage_lines"].append(line["id"])
        keep.append(line)
    inv["lines"]["data"] = keep
    inv["lines"]["total_count"] = len(keep)
    total = sum(line["amount"] for line in keep)
    for k in ("amount_due", "amount_remaining", "subtotal", "subtotal_excluding_tax", "total",
              "total_excluding_tax"):
        inv[k] = total


def finalize_due_invoices(s: Store) -> None:
    """Finalize (and charge) every renewal draft whose grace period is over, after the emulator
    clock moved: its usage lines take the usage reported by then (``invoice.finalized``)."""
    now = s.now()
    for inv in list(s.col("invoice").objects.values()):
        due = inv.get("automatically_finalizes_at")
        if inv["status"] != "draft" or due is None or due > now or not inv["auto_advance"]:
            continue
        _price_usage(s, inv)
        finalize(s, None, inv)
        inv["automatically_finalizes_at"] = None
        if inv["collection_method"] == "charge_automatically":
            pay(s, None, inv)


def invoice_line(s: Store, price, qty, amount, period, sub_id, si_id, metered) -> dict[str, Any]:
    return {
        "id": new_id("il_", 24),
        "object": "line_item",
        "amount": amount,
        "currency": price["currency"],
        "description": f"{qty:g} × {price['product']}",
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "invoice": None,
        "livemode": False,
        "metadata": {},
        "parent": {
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": None,
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": sub_id,
                "subscription_item": si_id,
            },
            "type": "subscription_item_details",
        },
        "period": {"end": period[1], "start": period[0]},
        "pretax_credit_amounts": [],
        "pricing": {
            "price_details": {"price": price["id"], "product": price["product"]},
            "type": "price_details",
            "unit_amount_decimal": price["unit_amount_decimal"],
        },
        "quantity": int(qty),
        "quantity_decimal": str(qty),
        "subscription": sub_id,
        "subtotal": amount,
        "taxes": [],
    }


ROUTES = (
    Route("POST", "/v1/invoices", create_invoice),
    Route("GET", "/v1/invoices", list_invoices),
    Route("GET", "/v1/invoices/{id}", retrieve("invoice")),
    Route("POST", "/v1/invoices/{id}/finalize", finalize_invoice),
    Route("POST", "/v1/invoices/{id}/pay", pay_invoice),
    Route("POST", "/v1/invoices/{id}", update_invoice),
    Route("DELETE", "/v1/invoices/{id}", delete_invoice),
    Route("POST", "/v1/invoices/{id}/void", void_invoice),
    Route("POST", "/v1/invoices/{id}/mark_uncollectible", mark_uncollectible),
)
