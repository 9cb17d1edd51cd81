"""The incident report as Markdown (for the post-incident review), CSV (finance's line items:
one row per discrepancy) or JSON (everything, machine-readable)."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from incidents.types import DiscrepancyLine, IncidentReport


class ReportFormat(StrEnum):
    MD = "md"
    CSV = "csv"
    JSON = "json"


CSV_COLUMNS = ["key", "kind", "customer_id", "meter", "day", "first_found", "found_by", "runs", "ledger", "other",
               "diff", "outcome", "settled_by", "amount_minor", "currency"]


def render(report: IncidentReport, fmt: ReportFormat) -> str:
    if fmt == ReportFormat.JSON:
        return report.model_dump_json(indent=2) + "\n"
    if fmt == ReportFormat.CSV:
        return to_csv(report.discrepancies)
    return to_markdown(report)


def to_csv(lines: list[DiscrepancyLine]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for line in lines:
        row = line.model_dump(mode="json")
        w.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])
    return out.getvalue()


def _t(t: datetime | None) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S} UTC" if t else ""


def _d(s: timedelta | float) -> str:
    seconds = int(s.total_seconds() if isinstance(s, timedelta) else s)
    days, rest = divmod(seconds, 86400)
    return (f"{days}d " if days else "") + f"{rest // 3600}h {rest % 3600 // 60:02d}m"


def _v(v: Decimal | int | str | None) -> str:
    return "" if v is None else str(v)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    cells = [[c.replace("|", "\\|") for c in r] for r in rows]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in cells)]


def to_markdown(r: IncidentReport) -> str:
    t = r.totals
    out = [f"# Incident report {_t(r.since)} to {_t(r.until)}", "",
           "Generated from billing-recon's durable records (reconciliation runs, discrepancies, the push outbox, "
           "the audit log, the webhook inbox). Quantities are meter units; amounts are minor units of the currency, "
           "blank where no price is known.", "", "## Totals", ""]
    out += _table(["figure", "value"], [
        ["windows without a successful reconciliation (> " + _d(r.max_gap_seconds) + ")",
         f"{t.gaps} ({_d(t.gap_seconds)} in all)"],
        ["discrepancies", str(t.discrepancies)],
        *[[f"discrepancies {k}", str(v)] for k, v in t.by_outcome.items()],
        *[[f"quantity |ledger - Stripe| {m}", _v(q)] for m, q in sorted(t.quantity_by_meter.items())],
        *[[f"amount {c or '?'} (minor units, + under-billed)", str(a)] for c, a in sorted(t.amount_minor_by_currency.items())],
        ["Stripe discrepancies without a known price", str(t.unpriced)],
        ["meter events pushed (sent or confirmed)", f"{t.pushes_applied} ({_v(t.pushes_applied_value)} units)"],
        ["audit rows", str(t.audit_rows)], ["manual adjustments", str(t.manual_adjustments)],
        ["webhook events missed (stored by a replay)", str(t.events_missed)]])
    out += ["", "## Windows without a successful reconciliation", ""]
    out += _table(["from", "to", "duration", "runs failed", "last error"], [
        [_t(g.start), _t(g.end) + (" (ongoing)" if g.ongoing else ""), _d(g.duration), str(g.runs_failed),
         g.last_error or ""] for g in r.gaps]) if r.gaps else ["None."]
    out += ["", "## Discrepancies and how they ended", ""]
    out += _table(["key", "kind", "first found", "ledger", "other", "diff", "outcome", "settled by", "amount"], [
        [d.key, d.kind, _t(d.first_found), _v(d.ledger), _v(d.other), _v(d.diff), d.outcome.value, d.settled_by or "",
         f"{d.amount_minor} {d.currency}" if d.amount_minor is not None else ""] for d in r.discrepancies]) \
        if r.discrepancies else ["None."]
    c = r.corrections
    out += ["", "## Corrections", ""]
    out += _table(["meter events", "count", "units"], [
        ["applied (sent or confirmed)", str(c.applied.count), _v(c.applied.value)],
        *[[f"applied: {m}", str(p.count), _v(p.value)] for m, p in sorted(c.by_meter.items())],
        ["cancelled", str(c.cancelled.count), _v(c.cancelled.value)],
        ["still open (planned, not sent)", str(c.open.count), _v(c.open.value)],
        ["failed, not replaced", str(c.failed_unreplaced.count), _v(c.failed_unreplaced.value)]])
    out += ["", "Audit rows by action: " + (", ".join(f"{k} {v}" for k, v in c.audit_actions.items()) or "none") + "."]
    if c.unaudited:
        out += ["", "Meter events without their audit row: " + ", ".join(c.unaudited) + "."]
    out += ["", "## Manual adjustments", ""]
    out += _table(["at", "actor", "action", "entity", "customer", "reason"], [
        [_t(a.at), a.actor, a.action, f"{a.entity_type} {a.entity_id}", a.customer_id or "", a.reason or ""]
        for a in r.manual_adjustments]) if r.manual_adjustments else ["None."]
    e = r.events
    out += ["", "## Webhook events", "",
            f"Missed (never delivered, stored by a replay): {e.missed}, of which handled: {e.missed_handled}. "
            f"Delivered, failed, then handled: {e.redelivered_handled}. Still unprocessed: {e.unprocessed}.", ""]
    if e.missed_by_day_type:
        out += _table(["day type", "missed"], [[k, str(v)] for k, v in sorted(e.missed_by_day_type.items())])
    return "\n".join(out) + "\n"
