"""How `customer show` and `customer repair` print: rich tables with Stripe and Postgres side by
side (a mismatched value is red, with both sides), and the one JSON document of `--json`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from rich.markup import escape
from rich.table import Table

from customer.types import (
    AuditRow,
    CustomerSnapshot,
    CustomerView,
    Domain,
    Mismatch,
    Pair,
    RepairCustomerResult,
)
from starter.kit import console, run_link

SUBSCRIPTION_COLUMNS = ("status", "current_period_start", "current_period_end", "cancel_at_period_end", "items")
INVOICE_COLUMNS = ("number", "status", "total", "amount_due", "amount_paid", "amount_remaining", "paid_at")
CUSTOMER_ROWS = ("customer_id", "email", "name", "deleted")


def view_json(v: CustomerView) -> dict[str, Any]:
    """The snapshot as one document, each audit row with its Temporal UI link, and `mismatches`."""
    doc = v.snapshot.model_dump(mode="json")
    for row, out in zip(v.snapshot.audit, doc["audit"], strict=True):
        out["ui_link"] = run_link(row.workflow_id, row.run_id)
    doc["mismatches"] = [m.model_dump(mode="json") for m in v.mismatches]
    return doc


def print_view(v: CustomerView) -> None:
    s, bad = v.snapshot, _flagged(v.mismatches)
    console.print(f"[bold]customer {escape(s.customer_id or '-')}[/bold] (Stripe {escape(s.stripe_customer_id or '-')}), "
                  f"read {fmt(s.read_at)}")
    console.print(_customer_table(s, bad))
    console.print(_pairs_table("Subscriptions (items: price x quantity, period)", Domain.SUBSCRIPTIONS,
                               s.subscriptions, SUBSCRIPTION_COLUMNS, bad))
    console.print(_pairs_table("Latest invoices", Domain.INVOICES, s.invoices, INVOICE_COLUMNS, bad))
    _print_credits(s, bad)
    _print_usage(s)
    _print_rest(s)
    print_mismatches(v.mismatches)


def print_mismatches(mismatches: list[Mismatch], title: str = "mismatches") -> None:
    if not mismatches:
        console.print(f"[green]no {title}: Stripe and Postgres agree[/green]")
        return
    console.print(f"[bold red]{len(mismatches)} {title}:[/bold red]")
    for m in mismatches:
        detail = f" ({escape(m.detail)})" if m.detail else ""
        console.print(f"  [red]{m.domain.value}[/red] {escape(m.entity)} {escape(m.field)}: "
                      f"here {escape(fmt(m.local))}, Stripe {escape(fmt(m.stripe))}{detail}", soft_wrap=True)


def print_repair(r: RepairCustomerResult) -> None:
    console.print(f"[bold]{escape(r.workflow_id)}[/bold] ({r.mode.value}, customer {escape(r.customer_id)}, "
                  f"actor {escape(r.actor)})")
    print_mismatches(r.before, "mismatches found")
    t = _table("Steps", ("step", "workflow", "result"))
    for st in r.steps:
        result = escape(st.summary) + (" [yellow](paused: observe-only)[/yellow]" if st.paused else "") + (
            f" [red]failed: {escape(st.failed)}[/red]" if st.failed else "")
        t.add_row(st.step.value, escape(st.workflow_id), result)
    console.print(t)
    if r.paused:
        console.print("[yellow]auto-healing is paused: nothing was written; the mismatches above are what "
                      "the repair would fix (billing-recon resume, then repair again)[/yellow]")
    console.print(_audit_table(f"Fixes: {len(r.fixes)} audit row(s)", r.fixes))
    print_mismatches(r.after, "mismatches left")


# ---------------------------------------------------------------------------- sections


def _flagged(mismatches: Iterable[Mismatch]) -> set[tuple[Domain, str, str]]:
    return {(m.domain, m.entity, m.field) for m in mismatches}


def _customer_table(s: CustomerSnapshot, bad: set[tuple[Domain, str, str]]) -> Table:
    c = s.customer
    t = _table("Customer and mapping", ("field", "here", "Stripe"))
    for f in CUSTOMER_ROWS:
        here = fmt(c.local.get(f)) if c.local else "[red]missing[/red]"
        there = fmt(c.stripe.get(f)) if c.stripe else "[red]missing[/red]"
        if (Domain.CUSTOMER, c.id, f) in bad:
            here, there = f"[bold red]{here}[/bold red]", f"[bold red]{there}[/bold red]"
        t.add_row(f, here, there)
    return t


def _pairs_table(title: str, domain: Domain, pairs: list[Pair], columns: tuple[str, ...],
                 bad: set[tuple[Domain, str, str]]) -> Table:
    t = _table(title, ("id", *columns))
    for p in pairs:
        if p.local is None or p.stripe is None:
            side = p.local or p.stripe or {}
            where = "missing here" if p.local is None else "missing in Stripe"
            t.add_row(f"[bold red]{escape(p.id)} ({where})[/bold red]", *(escape(fmt(side.get(c))) for c in columns))
            continue
        cells = []
        for col in columns:
            here, there = p.local.get(col), p.stripe.get(col)
            cells.append(f"[bold red]here {escape(fmt(here))} | Stripe {escape(fmt(there))}[/bold red]"
                         if (domain, p.id, col) in bad else escape(fmt(there)))
        t.add_row(escape(p.id), *cells)
    return t


def _print_credits(s: CustomerSnapshot, bad: set[tuple[Domain, str, str]]) -> None:
    cr = s.credits
    balance = f"balance {fmt(cr.balance)}, ledger sum {cr.ledger_sum}"
    console.print("[bold]Credits[/bold]: " + (f"[bold red]{balance}[/bold red]" if cr.balance != cr.ledger_sum
                                                 and s.customer_id else balance))
    t = _table("Credit purchases (Stripe's paid credit checkouts)",
               ("checkout session", "created", "credits", "ledger rows", "granted"))
    for p in cr.purchases:
        wrong = (Domain.CREDITS, p.checkout_session_id, "grant") in bad
        row = [escape(p.checkout_session_id), fmt(p.created), str(p.credits), str(p.granted), str(p.granted_amount)]
        t.add_row(*([f"[bold red]{c}[/bold red]" for c in row] if wrong else row))
    console.print(t)
    led = _table("Credit ledger (latest)", ("id", "at", "amount", "source", "reason", "actor"))
    for e in cr.ledger:
        led.add_row(str(e.id), fmt(e.created_at), str(e.amount), escape(e.source), escape(fmt(e.reason)),
                    escape(fmt(e.actor)))
    console.print(led)


def _print_usage(s: CustomerSnapshot) -> None:
    u = s.usage
    if u is None:
        return
    t = _table(f"Usage this period ({u.period_start} .. {u.through})",
               ("meter", "ledger", "counter", "quota", "our pushes", "Stripe"), right=True)
    for m in u.meters:
        counter = fmt(m.counter)
        if m.counter != m.ledger:
            counter = f"[bold red]{counter}[/bold red]"
        stripe = fmt(m.stripe)
        if m.stripe is not None and m.stripe != m.ledger:
            stripe = f"[bold red]{stripe}[/bold red]"
        t.add_row(escape(m.meter), fmt(m.ledger), counter, fmt(m.quota), fmt(m.pushed), stripe)
    console.print(t)


def _print_rest(s: CustomerSnapshot) -> None:
    f = _table(f"Open findings of the latest usage run ({escape(s.findings_run or 'none')})",
               ("key", "kind", "status", "diff", "action", "detail"))
    for x in s.findings:
        f.add_row(escape(x.key), x.kind, x.status, fmt(x.diff), escape(fmt(x.action)), escape(fmt(x.detail)))
    console.print(f)
    e = _table("Inbox events (latest)", ("event", "type", "created", "status", "attempts", "error"))
    for ev in s.events:
        status = ev.status if ev.status != "failed" else f"[red]{ev.status}[/red]"
        e.add_row(escape(ev.event_id), escape(ev.type), fmt(ev.created), status, str(ev.attempts), escape(fmt(ev.error)))
    console.print(e)
    console.print(_audit_table("Audit log (latest)", s.audit))


def _audit_table(title: str, rows: list[AuditRow]) -> Table:
    t = _table(title, ("id", "at", "actor", "action", "entity", "reason", "Temporal UI"))
    for a in rows:
        t.add_row(str(a.id), fmt(a.at), escape(a.actor), a.action, escape(f"{a.entity_type} {a.entity_id}"),
                  escape(fmt(a.reason)), escape(fmt(run_link(a.workflow_id, a.run_id))))
    return t


def _table(title: str, columns: tuple[str, ...], *, right: bool = False) -> Table:
    """Long values (ids, links) fold onto more lines instead of being cut: a cut link is no link."""
    t = Table(title=title)
    for col in columns:
        t.add_column(col, overflow="fold", justify="right" if right else "left")
    return t


def fmt(v: Any) -> str:
    """A value for a cell: '-' for nothing, times to the second, items as price x quantity."""
    if v is None:
        return "-"
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, Decimal):
        return format(v.normalize(), "f")
    if isinstance(v, str) and len(v) >= 19 and v[4] == "-" and v[10] == "T":
        return v[:19].replace("T", " ")
    if isinstance(v, list):
        return "; ".join(_item(i) if isinstance(i, dict) else str(i) for i in v) or "-"
    return str(v)


def _item(i: dict[str, Any]) -> str:
    start, end = i.get("current_period_start"), i.get("current_period_end")
    period = ""
    if start and end:
        period = f" {datetime.fromtimestamp(start, UTC):%Y-%m-%d}..{datetime.fromtimestamp(end, UTC):%Y-%m-%d}"
    return f"{i.get('price')} x{i.get('quantity')}{period}"
