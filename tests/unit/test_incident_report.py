"""The incident report's pure assembly (incidents/report.py) and rendering (incidents/render.py)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from incidents.render import ReportFormat, render
from incidents.report import (
    build_report,
    discrepancy_lines,
    find_gaps,
    price_table,
    summarize_pushes,
)
from incidents.types import (
    AuditRow,
    DiscrepancyRow,
    EventRow,
    IncidentData,
    Outcome,
    PushRow,
    RunRow,
    UnitPrice,
    price_key,
)

T0 = datetime(2026, 11, 20, tzinfo=UTC)
DAY = date(2026, 11, 20)


def run(run_id: str, at: datetime, *, status: str = "completed", mode: str = "apply", observe_only: bool = False,
        window: tuple[date, date] = (DAY, DAY + timedelta(days=5)), customers: list[str] | None = None,
        error: str | None = None) -> RunRow:
    return RunRow(run_id=run_id, mode=mode, status=status, observe_only=observe_only, window_start=window[0],
                  window_end=window[1], customers_filter=customers or [], started_at=at,
                  finished_at=at + timedelta(minutes=5), error=error)


def finding(run_id: str, at: datetime, status: str, *, key: str = "stripe|acme|api|2026-11-20",
            kind: str = "under_reported", ledger: str = "10", stripe: str | None = "4") -> DiscrepancyRow:
    return DiscrepancyRow(run_id=run_id, run_started_at=at, discrepancy_key=key, kind=kind, status=status,
                          customer_id="acme", meter="api", usage_day=DAY, ledger_value=Decimal(ledger),
                          stripe_value=Decimal(stripe) if stripe is not None else None,
                          counter_value=None if stripe is not None else Decimal(0),
                          diff=Decimal(ledger) - Decimal(stripe or 0), created_at=at)


def test_gaps_between_successes_with_the_failed_runs_in_them():
    runs = [run("ok1", T0), run("dry", T0 + timedelta(hours=2), mode="dry-run"),
            run("paused", T0 + timedelta(hours=3), observe_only=True),
            run("boom", T0 + timedelta(days=1), status="failed", error="Stripe 500"),
            run("ok2", T0 + timedelta(days=3)), run("ok3", T0 + timedelta(days=3, minutes=30))]
    since, until = T0 - timedelta(hours=1), T0 + timedelta(days=4)
    gaps = find_gaps(runs, T0 - timedelta(hours=1, minutes=30), since=since, until=until, max_gap=timedelta(hours=1))
    # Last success before `since` to ok1 is 1h35m: a gap; ok1 -> ok2 (dry-run and paused runs do
    # not count as successes); ok3 -> until is over 23 hours, ongoing.
    assert [(g.start, g.end, g.ongoing, g.runs_failed) for g in gaps] == [
        (T0 - timedelta(hours=1, minutes=30), T0 + timedelta(minutes=5), False, 0),
        (T0 + timedelta(minutes=5), T0 + timedelta(days=3, minutes=5), False, 3),
        (T0 + timedelta(days=3, minutes=35), until, True, 0)]
    assert gaps[1].last_error == "Stripe 500"
    # Nothing ever succeeded: one ongoing window over the whole report.
    [only] = find_gaps([], None, since=since, until=until, max_gap=timedelta(hours=1))
    assert (only.start, only.end, only.ongoing) == (since, until, True)


def test_each_discrepancy_ends_in_one_outcome():
    t = T0
    runs = [run("dry", t, mode="dry-run"), run("apply", t + timedelta(hours=1)),
            run("later", t + timedelta(hours=2)), run("other-customer", t + timedelta(hours=3), customers=["globex"])]
    cases = {
        # found by a dry-run, corrected by an apply run (its verify pass found nothing left)
        "stripe|acme|api|a": [finding("dry", t, "observed"), finding("apply", t + timedelta(hours=1), "applied")],
        # held for approval and never decided
        "stripe|acme|api|b": [finding("apply", t + timedelta(hours=1), "held")],
        # observed, then a later apply run covered the key and found nothing: resolved
        "stripe|acme|api|c": [finding("dry", t, "observed")],
        # still in flight in the apply run's verify pass: pending ...
        "stripe|acme|api|d": [finding("apply", t + timedelta(hours=1), "applied"),
                              finding("apply", t + timedelta(hours=1), "pending", key="verify|stripe|acme|api|d")],
        "stripe|acme|api|e": [finding("later", t + timedelta(hours=2), "rejected")],
        "stripe|acme|api|f": [finding("apply", t + timedelta(hours=1), "unfixable", kind="needs_invoice_adjustment")],
    }
    rows = [r.model_copy(update={"discrepancy_key": r.discrepancy_key if r.discrepancy_key.startswith("verify|")
                                 else key}) for key, found in cases.items() for r in found]
    lines = {line.key: line for line in discrepancy_lines(rows, runs, {})}
    assert {k: (v.outcome, v.settled_by) for k, v in lines.items()} == {
        "stripe|acme|api|a": (Outcome.CORRECTED, "apply"),
        "stripe|acme|api|b": (Outcome.AWAITING_APPROVAL, "apply"),
        "stripe|acme|api|c": (Outcome.RESOLVED, "apply"),
        # ... until a later successful run covered the key and found nothing
        "stripe|acme|api|d": (Outcome.RESOLVED, "later"),
        "stripe|acme|api|e": (Outcome.REJECTED, "later"),
        "stripe|acme|api|f": (Outcome.NEEDS_INVOICE_ADJUSTMENT, "apply")}
    assert lines["stripe|acme|api|a"].runs == 2 and lines["stripe|acme|api|a"].found_by == "dry"
    [pending] = discrepancy_lines([r for r in rows if r.discrepancy_key.endswith("|d")], runs[:2], {})
    assert (pending.outcome, pending.settled_by) == (Outcome.PENDING, "apply")
    # A key only ever seen with our pushes settling is no discrepancy.
    assert discrepancy_lines([finding("apply", t, "pending", kind="pending")], runs, {}) == []
    # A dry-run finding no later healing run covered stays open.
    [open_line] = discrepancy_lines([finding("dry", t, "observed")], [runs[0], runs[3]], {})
    assert open_line.outcome == Outcome.OPEN


def test_amounts_only_where_one_metered_per_unit_price_is_known():
    def price(pid: str, meter: str, amount: str | None = "2.5", scheme: str = "per_unit", usage: str = "metered"):
        return {"id": pid, "currency": "usd", "billing_scheme": scheme, "unit_amount_decimal": amount,
                "recurring": {"usage_type": usage, "meter": meter}}

    meters = {"mtr_api": "api", "mtr_gpu": "gpu", "mtr_st": "storage"}
    table = price_table([("acme", price("price_1", "mtr_api")), ("acme", price("price_1", "mtr_api")),
                         ("acme", price("price_t", "mtr_gpu", scheme="tiered")),
                         ("globex", price("price_2", "mtr_api")), ("globex", price("price_3", "mtr_api", "4")),
                         ("initech", price("price_4", "mtr_unknown")),
                         ("initech", price("price_5", "mtr_st", usage="licensed"))], meters)
    assert table == {price_key("acme", "api"): UnitPrice(unit_amount_decimal=Decimal("2.5"), currency="usd",
                                                          price_id="price_1")}
    [line] = discrepancy_lines([finding("apply", T0, "applied", ledger="10", stripe="3")], [run("apply", T0)], table)
    assert (line.amount_minor, line.currency) == (18, "usd")  # 7 units x 2.5 = 17.5 -> 18 (half up)
    [counter] = discrepancy_lines([finding("apply", T0, "applied", key="counter|acme|api|2026-11-01",
                                           kind="counter_drift", stripe=None)], [run("apply", T0)], table)
    assert counter.amount_minor is None  # a counter is not billing
    # A poison ledger value (NaN, stored before the constraints) is listed, never priced or summed.
    poison = finding("apply", T0, "observed", kind="invalid_usage").model_copy(
        update={"ledger_value": Decimal("NaN"), "diff": Decimal("NaN")})
    [line] = discrepancy_lines([poison], [run("apply", T0)], table)
    assert line.amount_minor is None and line.currency is None and line.outcome == Outcome.OPEN
    report = build_report(IncidentData(since=T0, until=T0 + timedelta(days=1), discrepancies=[poison],
                                       runs=[run("apply", T0)], prices=table), max_gap=timedelta(days=2))
    assert report.totals.quantity_by_meter == {} and report.totals.by_outcome == {"open": 1}
    assert "NaN" in render(report, ReportFormat.MD)


def test_corrections_and_report_totals():
    def push(ident: str, status: str, value: str = "5", replaces: str | None = None, audited: bool = True) -> PushRow:
        return PushRow(identifier=ident, customer_id="acme", meter="api", usage_day=DAY, value=Decimal(value),
                       kind="delta", status=status, replaces=replaces, planned_at=T0, audited=audited)

    audit = [AuditRow(at=T0, actor="schedule:usage-sync", action="usage.push_meter_event", entity_type="meter_event",
                      entity_id="p1"),
             AuditRow(at=T0, actor="alice", action="credits.adjust", entity_type="credit_ledger", entity_id="7",
                      customer_id="acme", reason="goodwill")]
    c = summarize_pushes([push("p1", "confirmed"), push("p2", "sent", "2"), push("p3", "failed"),
                          push("p4", "failed"), push("p5", "sent", "5", replaces="p4"), push("p6", "planned"),
                          push("p7", "cancelled", audited=False)], audit)
    assert (c.applied.count, c.applied.value) == (3, Decimal(12))
    assert (c.failed_unreplaced.count, c.open.count, c.cancelled.count) == (1, 1, 1)
    assert c.unaudited == ["p7"] and c.audit_actions == {"credits.adjust": 1, "usage.push_meter_event": 1}

    data = IncidentData(
        since=T0 - timedelta(hours=1), until=T0 + timedelta(days=1), runs=[run("apply", T0)],
        discrepancies=[finding("apply", T0, "applied")], pushes=[push("p1", "confirmed", "6")], audit=audit,
        events=[EventRow(event_id="evt_1", type="invoice.paid", created=T0, source="replay", status="processed",
                         attempts=1, deliveries=1),
                EventRow(event_id="evt_2", type="invoice.paid", created=T0, source="webhook", status="processed",
                         attempts=3, deliveries=2),
                EventRow(event_id="evt_3", type="customer.created", created=T0, source="webhook", status="failed",
                         attempts=10, deliveries=1)])
    report = build_report(data, max_gap=timedelta(hours=1))
    t = report.totals
    assert (t.discrepancies, t.by_outcome, t.pushes_applied, t.audit_rows, t.manual_adjustments) == (
        1, {"corrected": 1}, 1, 2, 1)
    # since -> the run's finish is 65 min; from it to `until` nothing succeeded (ongoing).
    assert t.quantity_by_meter == {"api": Decimal(6)} and t.unpriced == 1 and t.gaps == 2
    assert (report.events.missed, report.events.missed_handled, report.events.redelivered_handled,
            report.events.unprocessed) == (1, 1, 1, 1)
    assert report.events.missed_by_day_type == {"2026-11-20 invoice.paid": 1}

    doc = json.loads(render(report, ReportFormat.JSON))
    assert doc["totals"]["by_outcome"] == {"corrected": 1}
    rows = list(csv.DictReader(io.StringIO(render(report, ReportFormat.CSV))))
    assert [(r["key"], r["outcome"], r["diff"], r["amount_minor"]) for r in rows] == [
        ("stripe|acme|api|2026-11-20", "corrected", "6", "")]
    md = render(report, ReportFormat.MD)
    assert "| alice | credits.adjust | credit_ledger 7 | acme | goodwill |" in md
    assert "| windows without a successful reconciliation (> 1h 00m) | 2 (1d 1h 00m in all) |" in md
    assert "| 2026-11-19 23:00:00 UTC | 2026-11-20 00:05:00 UTC | 1h 05m | 0 |  |" in md
    assert "| 2026-11-20 00:05:00 UTC | 2026-11-21 00:00:00 UTC (ongoing) |" in md
