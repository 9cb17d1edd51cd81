"""The comparison behind `customer show` and RepairCustomer: a snapshot -> its mismatches.

Pure (no IO, no clock): the snapshot already holds both sides in the shapes the resync compares
(`billing.stripe_objects` mappings) and the usage reconciliation's own findings for the
customer's keys, so "a mismatch" here means what those jobs would fix or report.

`Mismatch.local` is our value and `Mismatch.stripe` Stripe's; for the checks Postgres makes
with itself (a balance against its ledger, a counter against the usage ledger) `stripe` is None
and `detail` names the value it should equal."""

from __future__ import annotations

from typing import Any

from billing.policy import FindingKind
from billing.stripe_objects import INVOICE_DELETED
from customer.types import CustomerSnapshot, Domain, Mismatch, Pair

EXISTS = "exists"
PRESENT = "present"
COUNTER_KINDS = frozenset({FindingKind.COUNTER_DRIFT.value, FindingKind.ORPHAN_COUNTER.value})
CUSTOMER_FIELDS = ("email", "name", "deleted")


def compare(s: CustomerSnapshot) -> list[Mismatch]:
    """Every mismatch of the snapshot, domain by domain, in a stable order."""
    return [*customer_mismatches(s), *pair_mismatches(Domain.SUBSCRIPTIONS, s.subscriptions),
            *pair_mismatches(Domain.INVOICES, s.invoices), *credit_mismatches(s), *usage_mismatches(s)]


def customer_mismatches(s: CustomerSnapshot) -> list[Mismatch]:
    c = s.customer
    if c.local is None or c.stripe is None:
        return [_existence(Domain.CUSTOMER, c)] if (c.local or c.stripe) else []
    # A customer deleted in Stripe keeps no email or name there: only `deleted` compares.
    fields = ("deleted",) if c.stripe.get("deleted") else CUSTOMER_FIELDS
    out = [Mismatch(domain=Domain.CUSTOMER, entity=c.id, field=f, local=c.local.get(f), stripe=c.stripe.get(f))
           for f in fields if c.local.get(f) != c.stripe.get(f)]
    # The mapping: Stripe's metadata.customer_id names our id when the application set it. A
    # customer linked with `billing.link_customer` may have no metadata: nothing to compare.
    claimed = c.stripe.get("customer_id")
    if claimed is not None and claimed != c.local.get("customer_id"):
        out.append(Mismatch(domain=Domain.CUSTOMER, entity=c.id, field="customer_id", local=c.local.get("customer_id"),
                            stripe=claimed, detail="Stripe's metadata.customer_id names another customer; "
                                                   "the mapping is never changed automatically"))
    return out


def pair_mismatches(domain: Domain, pairs: list[Pair]) -> list[Mismatch]:
    out: list[Mismatch] = []
    for p in pairs:
        if p.local is None or p.stripe is None:
            # A draft deleted in Stripe, kept here marked deleted: Stripe has no object, rightly.
            if p.stripe is None and p.local is not None and p.local.get("status") == INVOICE_DELETED:
                continue
            out.append(_existence(domain, p))
            continue
        out += [Mismatch(domain=domain, entity=p.id, field=f, local=p.local.get(f), stripe=v)
                for f, v in p.stripe.items() if p.local.get(f) != v]
    return out


def credit_mismatches(s: CustomerSnapshot) -> list[Mismatch]:
    cr = s.credits
    entity = s.customer_id or s.stripe_customer_id or s.ref
    out: list[Mismatch] = []
    if s.customer_id is not None and (cr.balance or 0) != cr.ledger_sum:
        out.append(Mismatch(domain=Domain.CREDITS, entity=entity, field="balance", local=cr.balance,
                            detail=f"the credit ledger sums to {cr.ledger_sum}"))
    for p in cr.purchases:
        if p.granted == 0:
            out.append(Mismatch(domain=Domain.CREDITS, entity=p.checkout_session_id, field="grant", local=None,
                                stripe=p.credits, detail="paid credit purchase without a grant"))
        elif p.granted > 1:
            out.append(Mismatch(domain=Domain.CREDITS, entity=p.checkout_session_id, field="grant",
                                local=p.granted_amount, stripe=p.credits,
                                detail=f"granted {p.granted} times (reported, never removed automatically)"))
        elif p.granted_amount != p.credits:
            out.append(Mismatch(domain=Domain.CREDITS, entity=p.checkout_session_id, field="grant",
                                local=p.granted_amount, stripe=p.credits, detail="granted amount differs"))
    out += [Mismatch(domain=Domain.CREDITS, entity=e.split(":", 1)[0], field="metadata.credits", detail=e)
            for e in cr.invalid_purchases]
    return out


def usage_mismatches(s: CustomerSnapshot) -> list[Mismatch]:
    if s.usage is None:
        return []
    out: list[Mismatch] = []
    for f in s.usage.findings:
        if f.kind == FindingKind.OK.value:
            continue
        when = f.day.isoformat() if f.day else f"period {f.period_start}" if f.period_start else "*"
        action = f" -> {f.action}" if f.action else ""
        if f.kind in COUNTER_KINDS:
            out.append(Mismatch(domain=Domain.USAGE, entity=f"{f.meter} {when}", field="counter",
                                local=_num(f.counter), detail=f"{f.kind}: the usage ledger sums to "
                                                              f"{_num(f.ledger)}{action}"))
        else:
            out.append(Mismatch(domain=Domain.USAGE, entity=f"{f.meter} {when}", field="stripe",
                                local=_num(f.ledger), stripe=_num(f.stripe),
                                detail=f"{f.kind}: pushed {_num(f.pushed)}{action}" + (
                                    f"; {f.detail}" if f.detail else "")))
    return out


def _existence(domain: Domain, p: Pair) -> Mismatch:
    return Mismatch(domain=domain, entity=p.id, field=EXISTS, local=PRESENT if p.local is not None else None,
                    stripe=PRESENT if p.stripe is not None else None,
                    detail="missing here" if p.local is None else "missing in Stripe")


def _num(v: Any) -> Any:
    """A usage quantity as JSON keeps it exactly: text without exponent (None stays None)."""
    return None if v is None else format(v.normalize(), "f")
