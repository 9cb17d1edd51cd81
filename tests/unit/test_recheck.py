"""The drift policy and the apply-time re-check of a plan (billing/policy.py
`classify_stripe_key`, `recheck_correction`), as properties over random keys. Pure.

Model of one key: our pushes (settled, sent an hour ago, so inside Stripe's cancel window),
each counted by Stripe, plus what another system wrote (`foreign`, either sign):
S = sum(our live pushes) + foreign. Applying a plan: a cancel takes its push's value out of S,
a push adds its value, marking a push failed changes nothing in S.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.policy import (
    FindingKind,
    Push,
    PushKind,
    PushStatus,
    StripeFinding,
    classify_stripe_key,
    recheck_correction,
)

NOW = datetime(2026, 11, 15, 8, 0, 0, tzinfo=UTC)
DAY = NOW.date() - timedelta(days=1)
SETTLE = timedelta(minutes=10)
EPS = Decimal("0.005")
D = Decimal

values = st.integers(min_value=0, max_value=100_000).map(D)
signed = st.integers(min_value=-100_000, max_value=100_000).map(D)


def ours(vals: list[Decimal]) -> list[Push]:
    return [Push(f"p{i}", v, PushStatus.SENT, PushKind.DELTA, NOW - timedelta(hours=1, seconds=i + 1),
                 NOW - timedelta(hours=1, seconds=i)) for i, v in enumerate(vals)]


def classify(ledger: Decimal, stripe: Decimal, pushes: list[Push], auto: bool = True) -> StripeFinding:
    return classify_stripe_key(customer_id="c1", meter="m", day=DAY, ledger=ledger, stripe=stripe, pushes=pushes,
                               now=NOW, settle=SETTLE, epsilon=EPS, auto_approve_over_reporting=auto)


def apply(stripe: Decimal, pushes: list[Push], *, cancel: list[str], push: Decimal | None) -> Decimal:
    value = {p.identifier: p.value for p in pushes}
    return stripe - sum((value[i] for i in cancel), D(0)) + (push or D(0))


def plan_parts(f: StripeFinding) -> dict:
    return {"cancel": list(f.cancel), "mark_failed": list(f.mark_failed),
            "push": f.push.value if f.push else None}


@settings(max_examples=400, deadline=None)
@given(values, st.lists(values, max_size=4), signed, st.booleans())
def test_drift_policy_a_settled_keys_plan_lands_exactly_on_the_ledger(ledger, our_values, foreign, auto):
    pushes = ours(our_values)
    stripe = sum(our_values, D(0)) + foreign
    f = classify(ledger, stripe, pushes, auto)
    after = apply(stripe, pushes, cancel=f.cancel, push=f.push.value if f.push else None)
    assert f.kind != FindingKind.PENDING  # nothing in flight: never ambiguous
    assert abs(after - ledger) <= D("0.000001"), (f, after)
    if f.kind == FindingKind.OK:
        assert f.push is None and not f.cancel
    # Over-reporting beyond epsilon waits for approval unless auto-approved; nothing else does.
    assert f.needs_approval == (f.kind == FindingKind.OVER_REPORTED and f.beyond_epsilon and not auto)
    # Compensations are negative, pushes of missing usage positive.
    if f.push is not None:
        assert (f.push.value < 0) == (f.kind == FindingKind.OVER_REPORTED)


@settings(max_examples=300, deadline=None)
@given(values, st.lists(values, max_size=4), signed)
def test_a_plan_rechecked_against_its_own_state_is_kept_whole(ledger, our_values, foreign):
    pushes = ours(our_values)
    stripe = sum(our_values, D(0)) + foreign
    f = classify(ledger, stripe, pushes)
    rc = recheck_correction(**plan_parts(f), fresh=f, pushes=pushes)
    assert rc.stale == ""
    assert rc.cancel == f.cancel and rc.mark_failed == f.mark_failed and rc.push == (f.push is not None)


@settings(max_examples=600, deadline=None)
@given(values, st.lists(values, max_size=4), signed, signed, signed, st.sets(st.integers(0, 3)))
def test_what_the_recheck_keeps_never_moves_stripe_past_the_ledger(
        ledger, our_values, foreign, ledger_change, foreign_change, cancelled_since):
    """Planned at one state, applied at a later one (usage grew or was deleted, another system
    wrote, some of our pushes were cancelled meanwhile): the parts kept move Stripe toward the
    ledger of *now* and never across it; the rest is found again by the next scan."""
    pushes = ours(our_values)
    stripe = sum(our_values, D(0)) + foreign
    planned = classify(ledger, stripe, pushes)

    ledger_now = max(D(0), ledger + ledger_change)
    pushes_now = [Push(p.identifier, p.value, PushStatus.CANCELLED, p.kind, p.planned_at, p.sent_at,
                       NOW - timedelta(hours=1)) if i in cancelled_since else p for i, p in enumerate(pushes)]
    stripe_now = sum((p.value for p in pushes_now if p.status == PushStatus.SENT), D(0)) + foreign + foreign_change
    fresh = classify(ledger_now, stripe_now, pushes_now)
    rc = recheck_correction(**plan_parts(planned), fresh=fresh, pushes=pushes_now)

    after = apply(stripe_now, pushes, cancel=rc.cancel, push=planned.push.value if rc.push and planned.push else None)
    tol = D("0.000001")
    if stripe_now <= ledger_now:
        assert stripe_now - tol <= after <= ledger_now + tol, (planned, fresh, rc)
    else:
        assert ledger_now - tol <= after <= stripe_now + tol, (planned, fresh, rc)
    # Kept parts are parts of the plan; a plan that is not kept whole says why.
    assert set(rc.cancel) <= set(planned.cancel) and set(rc.mark_failed) <= set(planned.mark_failed)
    whole = (rc.cancel == planned.cancel and rc.mark_failed == planned.mark_failed
             and rc.push == (planned.push is not None))
    assert bool(rc.stale) == (not whole)


def test_the_over_reporting_that_grew_into_under_reporting_is_not_compensated():
    """The reported case: another system over-reported by 55,514 (held for approval), then usage
    grew by 55,664. The approved -55,514 compensation would leave the customer under-billed by
    55,664; the re-check drops it, and the fresh reading is under-reported by 150."""
    ledger = D(1000)
    stripe = ledger + 55_514
    planned = classify(ledger, stripe, [], auto=False)
    assert planned.kind == FindingKind.OVER_REPORTED and planned.needs_approval
    assert planned.push is not None and planned.push.value == D(-55_514)

    fresh = classify(ledger + 55_664, stripe, [])
    rc = recheck_correction(**plan_parts(planned), fresh=fresh, pushes=[])
    assert not rc.anything and not rc.push
    assert rc.stale.startswith("the key is now under_reported (ledger 56664, Stripe 56514, ours 0)")
    assert "dropped compensation of -55514" in rc.stale
    assert fresh.push is not None and fresh.push.value == D(150)


def test_an_under_reporting_plan_still_applies_when_more_usage_arrived():
    """New usage since the plan only adds to what is missing: the planned push still fits."""
    planned = classify(D(100), D(40), [])
    fresh = classify(D(130), D(40), [])
    rc = recheck_correction(**plan_parts(planned), fresh=fresh, pushes=[])
    assert rc.push and rc.stale == ""


def test_a_push_that_another_run_sent_meanwhile_makes_the_plan_stale():
    planned = classify(D(100), D(40), [])
    in_flight = Push("other", D(60), PushStatus.SENT, PushKind.DELTA, NOW - timedelta(seconds=6), NOW - timedelta(seconds=5))
    fresh = classify(D(100), D(40), [in_flight])
    assert fresh.kind == FindingKind.PENDING
    rc = recheck_correction(**plan_parts(planned), fresh=fresh, pushes=[in_flight])
    assert not rc.push and "the key is now pending" in rc.stale
