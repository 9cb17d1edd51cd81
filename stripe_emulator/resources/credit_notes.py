"""Credit notes: ``/v1/credit_notes`` (create, list, retrieve). Only on a finalized invoice
(open, paid or uncollectible; never a draft or a void one), for at most what is still
creditable. On an open (or uncollectible) invoice it is ``pre_payment``: it lowers
``amount_due``/``amount_remaining``. On a paid invoice it is ``post_payment``: its total goes to
``credit_amount`` (the customer's balance, a ``credit_note`` balance transaction),
``refund_amount`` (not modelled: refused) or ``out_of_band_amount``, which must add up to it.
Amount: ``amount``, or ``lines[]`` of ``type=custom_line_item`` (``unit_amount`` x
``quantity``) or ``type=invoice_line_item`` (``amount`` of one of the invoice's lines)."""

from __future__ import annotations

from typing import Any

from ..errors import StripeError, invalid, missing
from ..params import paginate, to_int
from ..state import RequestContext, Store, new_id
from .base import Params, Route, as_list, merge_metadata, retrieve
from .customer_balance_transactions import add_customer_balance_transaction

REASONS = ("duplicate", "fraudulent", "order_change", "product_unsatisfactory")


def _lines(p: Params, inv: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    inv_lines = {line["id"]: line for line in inv["lines"]["data"]}
    for i, spec in enumerate(as_list(p["lines"])):
        typ = spec.get("type")
        qty = to_int(spec.get("quantity", 1), f"lines[{i}][quantity]")
        if typ == "custom_line_item":
            if spec.get("unit_amount") in (None, ""):
                raise missing(f"lines[{i}][unit_amount]")
            if not spec.get("description"):
                raise missing(f"lines[{i}][description]")
            unit = to_int(spec["unit_amount"], f"lines[{i}][unit_amount]")
            amount, desc, ref = unit * qty, spec["description"], None
        elif typ == "invoice_line_item":
            ref = spec.get("invoice_line_item")
            if ref not in inv_lines:
                raise invalid(f"No such invoice line item: '{ref}'", f"lines[{i}][invoice_line_item]")
            amount = to_int(spec.get("amount", inv_lines[ref]["amount"]), f"lines[{i}][amount]")
            unit, desc = None, inv_lines[ref]["description"]
        else:
            raise invalid("Invalid lines[][type]: must be custom_line_item or invoice_line_item",
                          f"lines[{i}][type]")
        out.append({
            "id": new_id("cnli_", 24), "object": "credit_note_line_item", "amount": amount,
            "description": desc, "discount_amount": 0, "discount_amounts": [],
            "invoice_line_item": ref, "livemode": False, "metadata": None,
            "pretax_credit_amounts": [], "quantity": qty, "tax_rates": [], "taxes": None,
            "type": typ, "unit_amount": unit,
            "unit_amount_decimal": None if unit is None else str(unit),
        })
    return out


def create_credit_note(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    if not p.get("invoice"):
        raise missing("invoice")
    inv = s.col("invoice").get(p["invoice"], param="invoice", status=400)
    if inv["status"] in ("draft", "void"):
        raise StripeError(
            400,
            f"Credit notes can only be created on finalized invoices that are not void; this "
            f"invoice is {inv['status']}.",
            param="invoice",
            code="invoice_not_editable" if inv["status"] == "draft" else "invoice_unexpected_state",
        )
    if p.get("reason") not in (None, "", *REASONS):
        raise invalid("Invalid reason", "reason", "parameter_invalid_string")
    if p.get("lines"):
        lines = _lines(p, inv)
        total = sum(line["amount"] for line in lines)
    elif p.get("amount") not in (None, ""):
        total, lines = to_int(p["amount"], "amount"), []
    else:
        raise missing("amount")
    if total <= 0:
        raise invalid("The credit note's total must be a positive amount.", "amount")
    post = inv["status"] == "paid"
    credited = inv["post_payment_credit_notes_amount"] if post else inv["pre_payment_credit_notes_amount"]
    creditable = (inv["amount_paid"] - credited) if post else inv["amount_remaining"]
    if total > creditable:
        raise invalid(
            f"The credit note's total ({total}) must be less than or equal to the amount that "
            f"can still be credited on the invoice ({creditable}).",
            "amount",
            "credit_note_amount_exceeds_invoice",  # [U] the code Stripe uses is not published
        )
    credit_amount = out_of_band = 0
    if post:
        given = {k: to_int(p[k], k) for k in ("credit_amount", "refund_amount", "out_of_band_amount")
                 if p.get(k) not in (None, "")}
        if given.get("refund_amount"):
            raise invalid("The emulator does not model refunds through credit notes.", "refund_amount")
        if not given:
            given = {"credit_amount": total}  # [U] the emulator's default: the customer's balance
        if sum(given.values()) != total:
            raise invalid(
                "The sum of credit_amount, refund_amount and out_of_band_amount must equal the "
                f"credit note total ({total}).", "credit_amount")
        credit_amount, out_of_band = given.get("credit_amount", 0), given.get("out_of_band_amount", 0)
    seq = len([c for c in s.col("credit_note").objects.values() if c["invoice"] == inv["id"]]) + 1
    cn_id = new_id("cn_", 24)
    now = s.now()
    cn = {
        "id": cn_id, "object": "credit_note", "amount": total, "amount_shipping": 0,
        "created": now, "currency": inv["currency"], "customer": inv["customer"],
        "customer_account": None, "customer_balance_transaction": None, "discount_amount": 0,
        "discount_amounts": [], "effective_at": now, "invoice": inv["id"],
        "lines": {"object": "list", "data": lines, "has_more": False,
                  "url": f"/v1/credit_notes/{cn_id}/lines"},
        "livemode": False, "memo": p.get("memo"), "metadata": merge_metadata({}, p.get("metadata")),
        "number": f"{inv['number']}-CN-{seq:02d}", "out_of_band_amount": out_of_band or None,
        "pdf": f"https://pay.stripe.com/credit_notes/emulator/{cn_id}/pdf",
        "post_payment_amount": total if post else 0, "pre_payment_amount": 0 if post else total,
        "pretax_credit_amounts": [], "reason": p.get("reason") or None, "refunds": [],
        "shipping_cost": None, "status": "issued", "subtotal": total,
        "subtotal_excluding_tax": total, "total": total, "total_excluding_tax": total,
        "total_taxes": [], "type": "post_payment" if post else "pre_payment", "voided_at": None,
    }
    s.col("credit_note").add(cn)
    if post:
        inv["post_payment_credit_notes_amount"] += total
        if credit_amount:
            cust = s.col("customer").get(inv["customer"])
            txn = add_customer_balance_transaction(
                s, ctx, cust, -credit_amount, inv["currency"], "credit_note",
                credit_note=cn_id, invoice=inv["id"])
            cn["customer_balance_transaction"] = txn["id"]
    else:
        inv["pre_payment_credit_notes_amount"] += total
        inv["amount_due"] -= total
        inv["amount_remaining"] -= total
    s.emit("credit_note.created", cn, ctx)
    s.emit("invoice.updated", inv, ctx)
    return cn


def list_credit_notes(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    invoice, customer = p.get("invoice"), p.get("customer")
    items = s.col("credit_note").newest_first(
        lambda o: (invoice is None or o["invoice"] == invoice)
        and (customer is None or o["customer"] == customer))
    return paginate(items, p, "/v1/credit_notes", "credit_note")


ROUTES = (
    Route("POST", "/v1/credit_notes", create_credit_note),
    Route("GET", "/v1/credit_notes", list_credit_notes),
    Route("GET", "/v1/credit_notes/{id}", retrieve("credit_note")),
)
