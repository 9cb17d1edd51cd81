"""The scan of a batch (reconcile/scan.py `plan_batch`), case by case. Pure: no Temporal, no IO.

Each case gives what Postgres and Stripe say about one small batch and the write mode, and
asserts the exact findings (kind, values, correction plan, status), the counts and the pushes
to confirm. Spec: docs/reconciliation.md "Rules per key" and "Modes".
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.periods import push_timestamp
from billing.policy import (
    FindingKind,
    PlannedPush,
    Push,
    PushKind,
    PushStatus,
    correction_identifier,
)
from common.types import Mode
from reconcile.plans import (
    CounterCorrection,
    CounterRepair,
    Finding,
    StripeCorrection,
    plan_from_json,
    plan_to_json,
)
from reconcile.scan import (
    BatchRows,
    CounterRow,
    Customer,
    LedgerDay,
    OutboxRow,
    ScanPolicy,
    Summaries,
    plan_batch,
    tally,
)
from reconcile.types import Counts, DiscrepancyStatus, WriteMode, page_write_mode

NOW = datetime(2026, 11, 15, 8, 0, 0, tzinfo=UTC)
DAY = date(2026, 11, 12)
OLD_DAY = date(2026, 10, 1)  # outside Stripe's 35-day window at NOW
PERIOD = date(2026, 11, 1)
PERIOD_END = date(2026, 12, 1)
NOON = datetime(2026, 11, 12, 12, tzinfo=UTC)
METER = "api_requests"
C1 = Customer("c1", "cus_1")
D = Decimal
S = DiscrepancyStatus
APPLY, PLAN, OBSERVE = WriteMode.APPLY, WriteMode.PLAN, WriteMode.OBSERVE


def policy(mode: WriteMode = APPLY, *, start: date = DAY, end: date = DAY, auto: bool = False,
           meter_filter: tuple[str, ...] = (), verify: bool = False) -> ScanPolicy:
    return ScanPolicy(
        window_start=start, window_end=end, meters=(METER,), meter_filter=meter_filter,
        epsilon=D("0.005"), settle=timedelta(minutes=10), auto_approve_over_reporting=auto,
        write_mode=mode, now=NOW, verify=verify)


def usage(value: str, day: date = DAY, customer: str = "c1", meter: str = METER, dupes: int = 0) -> LedgerDay:
    return LedgerDay(customer, meter, day, D(value), dupes)


def counter(value: str, quota: str | None = None, customer: str = "c1", meter: str = METER) -> CounterRow:
    return CounterRow(customer, meter, PERIOD, PERIOD_END, D(value), None if quota is None else D(quota))


def pushed(ident: str, value: str, status: PushStatus = PushStatus.SENT, *, ago: timedelta = timedelta(hours=2),
           day: date = DAY) -> OutboxRow:
    return OutboxRow("c1", METER, day, Push(ident, D(value), status, PushKind.DELTA,
                                            planned_at=NOW - ago - timedelta(seconds=1), sent_at=NOW - ago))


def stripe(value: str, day: date = DAY, customer: str = "c1") -> dict[tuple[str, str], dict[date, Decimal]]:
    return {(customer, METER): {day: D(value)}}


def ident(kind: PushKind, p: str, s: str, ledger: str, seq: int = 0, day: date = DAY) -> str:
    return correction_identifier("c1", METER, day, kind, D(p), D(s), D(ledger), seq)


def stripe_key(kind: FindingKind, status: DiscrepancyStatus, *, ledger: str, s: str, p: str = "0",
               plan: StripeCorrection | None = None, beyond: bool = True, detail: str = "",
               day: date = DAY, prefix: str = "") -> Finding:
    return Finding(
        key=f"{prefix}stripe|c1|{METER}|{day}", kind=kind, customer_id="c1", stripe_customer_id="cus_1",
        meter=METER, status=status, usage_day=day, ledger=D(ledger), pushed=D(p), stripe=D(s),
        beyond_epsilon=beyond, plan=plan, detail=detail)


def push_plan(kind: PushKind, value: str, identifier: str, *, p: str = "0", cancel: list[str] | None = None,
              mark_failed: list[str] | None = None, needs_approval: bool = False,
              replaces: str | None = None) -> StripeCorrection:
    return StripeCorrection(
        expected_pushed=D(p), needs_approval=needs_approval, cancel=cancel or [],
        mark_failed=mark_failed or [], timestamp=NOON,
        push=PlannedPush(identifier, D(value), kind, NOON, replaces=replaces))


def counter_key(kind: FindingKind, status: DiscrepancyStatus, *, ledger: str, before: str | None,
                quota: str | None = None, transition: bool = False, detail: str = "",
                customer: str = "c1", sid: str | None = "cus_1", prefix: str = "") -> Finding:
    return Finding(
        key=f"{prefix}counter|{customer}|{METER}|{PERIOD}", kind=kind, customer_id=customer, stripe_customer_id=sid,
        meter=METER, status=status, period_start=PERIOD, ledger=D(ledger),
        counter=None if before is None else D(before),
        plan=CounterCorrection(counter=CounterRepair(
            period_start=PERIOD, period_end=PERIOD_END, expected_before=None if before is None else D(before),
            value=D(ledger), quota=None if quota is None else D(quota))),
        over_quota_transition=transition, detail=detail)


@dataclass
class Case:
    name: str
    policy: ScanPolicy
    findings: list[Finding]
    counts: Counts
    ledger: list[LedgerDay] = field(default_factory=list)
    counters: list[CounterRow] = field(default_factory=list)
    pushes: list[OutboxRow] = field(default_factory=list)
    summaries: Summaries = field(default_factory=Summaries)
    customers: list[Customer] = field(default_factory=lambda: [C1])
    confirm: list[str] = field(default_factory=list)


def counts(**kw: int) -> Counts:
    return Counts(customers_scanned=kw.pop("customers_scanned", 1), **kw)


UNDER = push_plan(PushKind.DELTA, "6", ident(PushKind.DELTA, "0", "4", "10"))
OVER = push_plan(PushKind.COMPENSATION, "-5", ident(PushKind.COMPENSATION, "0", "15", "10"), needs_approval=True)
OVER_AUTO = OVER.model_copy(update={"needs_approval": False})

CASES = [
    Case("nothing anywhere", policy(), [], counts()),
    Case("in agreement, counter right", policy(), [], counts(keys_checked=1, dedupe_count=2),
         ledger=[usage("10", dupes=2)], counters=[counter("10")], summaries=Summaries(stripe("10"))),
    Case("in agreement confirms our settled push", policy(), [], counts(keys_checked=1),
         ledger=[usage("10")], counters=[counter("10")], summaries=Summaries(stripe("10")),
         pushes=[pushed("p1", "10")], confirm=["p1"]),
    Case("dupes are counted in the window only", policy(start=DAY, end=DAY), [], counts(keys_checked=1, dedupe_count=3),
         ledger=[usage("10", dupes=3), usage("0", day=date(2026, 11, 2), dupes=5)], counters=[counter("10")],
         summaries=Summaries(stripe("10"))),
    # ------------------------------------------------------------------ under-reported, by mode
    *[Case(f"under-reported, {mode}", policy(mode), [stripe_key(FindingKind.UNDER_REPORTED, status, ledger="10", s="4", plan=UNDER)],
           counts(keys_checked=1, drift_count=1, beyond_epsilon=1, held_for_approval=held),
           ledger=[usage("10")], counters=[counter("10")], summaries=Summaries(stripe("4")))
      for mode, status, held in [(APPLY, S.APPROVED, 0), (PLAN, S.PROPOSED, 1), (OBSERVE, S.OBSERVED, 0)]],
    Case("lost push: marked failed, gap re-pushed", policy(),
         [stripe_key(FindingKind.LOST_PUSH, S.APPROVED, ledger="10", s="0", p="10", plan=push_plan(
             PushKind.REPUSH, "10", ident(PushKind.REPUSH, "10", "0", "10", seq=1), p="10",
             mark_failed=["p1"], replaces="p1"))],
         counts(keys_checked=1, drift_count=1, beyond_epsilon=1),
         ledger=[usage("10")], counters=[counter("10")], pushes=[pushed("p1", "10")]),
    Case("pending: a push still settling explains the gap", policy(),
         [stripe_key(FindingKind.PENDING, S.PENDING, ledger="10", s="4", p="6",
                     detail="writes in flight may explain the difference")],
         counts(keys_checked=1, pending=1, beyond_epsilon=1),
         ledger=[usage("10")], counters=[counter("10")], summaries=Summaries(stripe("4")),
         pushes=[pushed("p1", "6", ago=timedelta(minutes=1))]),
    Case("outside Stripe's window: unfixable", policy(start=OLD_DAY, end=OLD_DAY),
         [stripe_key(FindingKind.NEEDS_INVOICE_ADJUSTMENT, S.UNFIXABLE, ledger="3", s="0", day=OLD_DAY,
                     detail="day is outside Stripe's 35-day meter event window")],
         counts(keys_checked=1, drift_count=1, beyond_epsilon=1, needs_invoice_adjustment=1),
         ledger=[usage("3", day=OLD_DAY)],
         counters=[CounterRow("c1", METER, date(2026, 10, 1), PERIOD, D(3))]),
    # ------------------------------------------------------------------ over-reported, by mode
    *[Case(f"over-reported beyond epsilon, {mode}, auto={auto}", policy(mode, auto=auto),
           [stripe_key(FindingKind.OVER_REPORTED, status, ledger="10", s="15", plan=OVER_AUTO if auto else OVER)],
           counts(keys_checked=1, drift_count=1, beyond_epsilon=1, held_for_approval=held),
           ledger=[usage("10")], counters=[counter("10")], summaries=Summaries(stripe("15")))
      for mode, auto, status, held in [(APPLY, False, S.HELD, 1), (APPLY, True, S.APPROVED, 0),
                                       (PLAN, False, S.PROPOSED, 1), (OBSERVE, False, S.OBSERVED, 0)]],
    Case("over-reported: our recent push is cancelled, no compensation", policy(auto=True),
         [stripe_key(FindingKind.OVER_REPORTED, S.APPROVED, ledger="10", s="15", p="15", plan=StripeCorrection(
             expected_pushed=D(15), cancel=["p2"], timestamp=push_timestamp(DAY, NOW)))],
         counts(keys_checked=1, drift_count=1, beyond_epsilon=1),
         ledger=[usage("10")], counters=[counter("10")], summaries=Summaries(stripe("15")),
         pushes=[pushed("p1", "10", ago=timedelta(days=2)), pushed("p2", "5", ago=timedelta(hours=1))]),
    # ------------------------------------------------------------------ counters
    Case("counter drift", policy(), [counter_key(FindingKind.COUNTER_DRIFT, S.APPROVED, ledger="10", before="7")],
         counts(keys_checked=1, drift_count=1), ledger=[usage("10")], counters=[counter("7")],
         summaries=Summaries(stripe("10"))),
    Case("missing counter, plan mode", policy(PLAN), [counter_key(FindingKind.COUNTER_DRIFT, S.PROPOSED, ledger="10", before=None)],
         counts(keys_checked=1, drift_count=1, held_for_approval=1), ledger=[usage("10")],
         summaries=Summaries(stripe("10"))),
    Case("orphan counter", policy(), [counter_key(FindingKind.ORPHAN_COUNTER, S.APPROVED, ledger="0", before="5",
                                                  detail="counter has no usage behind it")],
         counts(drift_count=1, orphan_counters=1), counters=[counter("5")]),
    Case("a repair crossing the quota", policy(OBSERVE),
         [counter_key(FindingKind.COUNTER_DRIFT, S.OBSERVED, ledger="10", before="5", quota="8", transition=True)],
         counts(keys_checked=1, drift_count=1, over_quota_transitions=1), ledger=[usage("10")],
         counters=[counter("5", quota="8")], summaries=Summaries(stripe("10"))),
    # ------------------------------------------------------------------ what cannot be compared
    Case("customer without a Stripe id", policy(),
         [Finding(key=f"stripe|c2|{METER}|{DAY}", kind=FindingKind.UNMAPPED_CUSTOMER, customer_id="c2",
                  stripe_customer_id=None, meter=METER, status=S.FAILED, usage_day=DAY, ledger=D(4),
                  detail="customer has usage but no stripe_customer_id")],
         counts(reconcile_failures=1), customers=[Customer("c2", None)],
         ledger=[usage("4", customer="c2")], counters=[counter("4", customer="c2")]),
    Case("Stripe refuses the summary read", policy(),
         [Finding(key=f"stripe|c1|{METER}|read", kind=FindingKind.STRIPE_READ_FAILED, customer_id="c1",
                  stripe_customer_id="cus_1", meter=METER, status=S.FAILED, detail="no such customer")],
         counts(reconcile_failures=1), ledger=[usage("4")], counters=[counter("4")],
         summaries=Summaries(unreadable={("c1", METER): "no such customer"})),
    Case("usage under an event name no meter has", policy(),
         [Finding(key="stripe|c1|emails|unmetered", kind=FindingKind.UNMETERED_USAGE, customer_id="c1",
                  stripe_customer_id="cus_1", meter="emails", status=S.OBSERVED, ledger=D(7),
                  detail="no active Stripe meter has this event name: this usage is never billed")],
         counts(unmetered_usage=1), ledger=[usage("7", meter="emails")], counters=[counter("7", meter="emails")]),
    Case("unmetered usage is not reported under a meter filter", policy(meter_filter=(METER,)), [], counts(),
         ledger=[usage("7", meter="emails")], counters=[counter("7", meter="emails")]),
    # ------------------------------------------------------------------ verify pass
    Case("verify pass: keys under verify|", policy(verify=True),
         [counter_key(FindingKind.COUNTER_DRIFT, S.APPROVED, ledger="10", before="7", prefix="verify|"),
          stripe_key(FindingKind.UNDER_REPORTED, S.APPROVED, ledger="10", s="4", plan=UNDER, prefix="verify|")],
         counts(keys_checked=1, drift_count=2, beyond_epsilon=1),
         ledger=[usage("10")], counters=[counter("7")], summaries=Summaries(stripe("4"))),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_plan_batch(case: Case):
    rows = BatchRows(customers=case.customers, ledger_days=case.ledger, counters=case.counters, pushes=case.pushes)
    plan = plan_batch(rows, case.summaries, case.policy)
    assert plan.findings == case.findings
    assert plan.counts == case.counts
    assert plan.confirm == case.confirm


def test_findings_come_in_a_stable_order():
    """Unmetered usage, counters, unreadable summaries, then each customer's keys day by day."""
    c3 = Customer("c3", "cus_3")
    rows = BatchRows(
        customers=[C1, c3],
        ledger_days=[usage("1", meter="emails"), usage("4"), usage("5", day=date(2026, 11, 13)),
                     usage("2", customer="c3")])
    summaries = Summaries(values={("c1", METER): {}}, unreadable={("c3", METER): "gone"})
    plan = plan_batch(rows, summaries, policy(start=DAY, end=date(2026, 11, 13)))
    assert [f.key for f in plan.findings] == [
        "stripe|c1|emails|unmetered", f"counter|c1|{METER}|{PERIOD}", f"counter|c1|emails|{PERIOD}",
        f"counter|c3|{METER}|{PERIOD}", f"stripe|c3|{METER}|read",
        f"stripe|c1|{METER}|{DAY}", f"stripe|c1|{METER}|2026-11-13"]


# ---------------------------------------------------------------------------- write mode


@pytest.mark.parametrize(("mode", "paused", "verify", "expected"), [
    (Mode.DRY_RUN, False, False, WriteMode.OBSERVE),
    (Mode.DRY_RUN, False, True, WriteMode.OBSERVE),
    (Mode.APPLY, False, False, WriteMode.APPLY),
    (Mode.APPLY, False, True, WriteMode.APPLY),  # an apply run's verify pass may still correct
    (Mode.APPLY, True, False, WriteMode.OBSERVE),
    (Mode.PLAN, False, False, WriteMode.PLAN),
    (Mode.PLAN, False, True, WriteMode.OBSERVE),  # a plan run applies exactly its plan
    (Mode.PLAN, True, False, WriteMode.OBSERVE),
])
def test_page_write_mode(mode: Mode, paused: bool, verify: bool, expected: WriteMode):
    assert page_write_mode(mode, paused=paused, verify=verify) == expected


def test_only_an_apply_page_holds_a_correction():
    assert [m.for_correction(True) for m in (APPLY, PLAN, OBSERVE)] == [WriteMode.HOLD, PLAN, OBSERVE]
    assert [m.for_correction(False) for m in (APPLY, PLAN, OBSERVE)] == [APPLY, PLAN, OBSERVE]


# ---------------------------------------------------------------------------- properties

amounts = st.integers(min_value=0, max_value=40).map(D)
key_states = st.lists(
    st.tuples(st.integers(0, 2), amounts, amounts, st.one_of(st.none(), amounts),
              st.lists(st.tuples(amounts, st.sampled_from(list(PushStatus)), st.integers(0, 3000)), max_size=3)),
    max_size=6)


def _batch(states: list) -> tuple[BatchRows, Summaries]:
    """Random (day, ledger, stripe, counter, pushes) per key of customer c1."""
    days = [DAY - timedelta(days=i) for i in range(3)]
    ledger, values, ctrs, pushes = {}, {}, {}, []
    for n, (d, led, s, ctr, ps) in enumerate(states):
        day = days[d]
        ledger[day] = usage(str(led), day=day)
        values[day] = s
        if ctr is not None:
            ctrs[PERIOD] = counter(str(ctr))
        for i, (v, status, minutes) in enumerate(ps):
            pushes.append(OutboxRow("c1", METER, day, Push(f"p{n}-{i}", v, status, PushKind.DELTA,
                                                            NOW - timedelta(minutes=minutes + 1),
                                                            NOW - timedelta(minutes=minutes))))
    rows = BatchRows([C1], list(ledger.values()), list(ctrs.values()), pushes)
    return rows, Summaries({("c1", METER): values})


@settings(max_examples=150, deadline=None)
@given(key_states, st.booleans())
def test_the_write_mode_changes_only_statuses(states: list, auto: bool):
    rows, summaries = _batch(states)
    window = policy(start=DAY - timedelta(days=2), end=DAY, auto=auto)
    plans = {m: plan_batch(rows, summaries, replace(window, write_mode=m)) for m in (APPLY, PLAN, OBSERVE)}
    strip = {m: [replace(f, status=S.OBSERVED) for f in p.findings] for m, p in plans.items()}
    assert strip[APPLY] == strip[PLAN] == strip[OBSERVE]
    assert S.APPROVED not in {f.status for f in plans[OBSERVE].findings + plans[PLAN].findings}
    assert {f.status for f in plans[OBSERVE].findings} <= {S.OBSERVED, S.PENDING, S.UNFIXABLE}
    assert plans[PLAN].counts.held_for_approval == sum(f.plan is not None for f in plans[PLAN].findings)


@settings(max_examples=150, deadline=None)
@given(key_states)
def test_counts_stand_for_the_findings_and_plans_survive_storage(states: list):
    rows, summaries = _batch(states)
    plan = plan_batch(rows, summaries, policy(start=DAY - timedelta(days=2), end=DAY))
    c = plan.counts
    assert c.drift_count + c.pending + c.unmetered_usage + c.reconcile_failures == len(plan.findings)
    assert tally(plan.findings).drift_count == c.drift_count
    for f in plan.findings:
        # Every correctable finding carries its plan, and the stored JSON reads back as it.
        correctable = f.kind not in (FindingKind.PENDING, FindingKind.NEEDS_INVOICE_ADJUSTMENT)
        assert (f.plan is not None) == correctable
        assert plan_from_json(plan_to_json(f.plan)) == f.plan


# ---------------------------------------------------------------------------- poison


def test_a_day_with_unusable_rows_is_reported_and_skips_its_key_and_its_counter():
    rows = BatchRows([C1], [LedgerDay("c1", METER, DAY, D(4), invalid=2, invalid_ids=("r-nan", "r-inf")),
                            usage("3", day=DAY - timedelta(days=1))],
                     [counter("99")])
    plan = plan_batch(rows, Summaries({("c1", METER): {DAY: D(1), DAY - timedelta(days=1): D(3)}}),
                      policy(start=DAY - timedelta(days=1), end=DAY))
    assert [(f.kind, f.key, f.status, f.ledger) for f in plan.findings] == [
        (FindingKind.INVALID_USAGE, f"usage|c1|{METER}|{DAY}", S.FAILED, None)]
    assert "2 usage row(s) not finite or beyond +-1E+15 (request ids: r-nan, r-inf)" in plan.findings[0].detail
    assert plan.counts.invalid_usage == 1 and plan.counts.reconcile_failures == 1
    assert plan.counts.keys_checked == 1  # the clean day only; the counter of the period is not touched


def test_a_nan_counter_is_repaired_and_a_nan_quota_is_ignored():
    plan = plan_batch(BatchRows([C1], [usage("10")], [counter("NaN", quota="NaN")]),
                      Summaries(stripe("10")), policy())
    assert [(f.kind, f.ledger, f.over_quota_transition) for f in plan.findings] == [
        (FindingKind.COUNTER_DRIFT, D(10), False)]


weird = st.one_of(amounts, st.sampled_from([D("NaN"), D("Infinity"), D("-Infinity"), D("1e74"), D("-1e80"),
                                             D("1e100000"), D("0.0000001")]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), weird, weird, st.one_of(st.none(), weird), st.one_of(st.none(), weird)),
                max_size=6))
def test_no_value_of_one_key_can_fail_the_batch(states: list):
    """Whatever Postgres or Stripe say (NaN, infinities, values too long to quantize), the scan
    of a batch never raises: a key it cannot reconcile is an `invalid_usage` finding."""
    days = [DAY - timedelta(days=i) for i in range(3)]
    ledger, values, ctrs = {}, {}, []
    for d, led, s, ctr, quota in states:
        ledger[days[d]] = LedgerDay("c1", METER, days[d], led)
        values[days[d]] = s
        if ctr is not None:
            ctrs = [CounterRow("c1", METER, PERIOD, PERIOD_END, ctr, quota)]
    c2 = Customer("c2", "cus_2")  # a clean neighbour in the same batch
    rows = BatchRows([C1, c2], [*ledger.values(), usage("5", customer="c2")], ctrs)
    plan = plan_batch(rows, Summaries({("c1", METER): values, ("c2", METER): {DAY: D(2)}}),
                      policy(start=days[-1], end=DAY))
    assert [f.plan.push.value for f in plan.findings if f.customer_id == "c2" and f.usage_day == DAY
            and isinstance(f.plan, StripeCorrection) and f.plan.push] == [D(3)]
    for f in plan.findings:
        if f.kind == FindingKind.INVALID_USAGE:
            assert f.status == S.FAILED and f.plan is None
        stored = plan_to_json(f.plan)  # NaN != NaN: compare the stored forms
        assert plan_to_json(plan_from_json(stored)) == stored


def test_usage_under_a_non_sum_meter_is_reported_as_unsupported_not_unmetered():
    p = replace(policy(), unsupported={"seats": "last"})
    rows = BatchRows([C1], [usage("10"), usage("4", meter="seats"), usage("2", meter="gpu")], [counter("10")])
    plan = plan_batch(rows, Summaries(stripe("10")), p)
    assert [(f.kind, f.meter, f.ledger, f.status) for f in plan.findings] == [
        (FindingKind.UNMETERED_USAGE, "gpu", D(2), S.OBSERVED),
        (FindingKind.UNSUPPORTED_METER, "seats", D(4), S.OBSERVED),
        # counters are still checked for every meter (there is none for these two)
        (FindingKind.COUNTER_DRIFT, "gpu", D(2), S.APPROVED),
        (FindingKind.COUNTER_DRIFT, "seats", D(4), S.APPROVED),
    ]
    assert "aggregates with 'last'" in plan.findings[1].detail
    assert (plan.counts.unsupported_meter, plan.counts.unmetered_usage) == (1, 1)
