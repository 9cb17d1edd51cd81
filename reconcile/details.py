"""What the Temporal UI shows of a ReconcileUsage run while it runs and when it ends (its current
details, common/ui.py), and the run's `BillingOutcome`. Pure: the workflow calls them."""

from __future__ import annotations

from common.types import Mode, RunStatus
from common.ui import Outcome, render
from reconcile.types import Counts, Phase, ReconcileCarry, ReconcileResult

# Findings only a human can resolve: (count field, what it means, the command that helps).
HUMAN_FINDINGS = (
    ("held_for_approval", "corrections held for approval (over-reporting beyond epsilon, or a plan)",
     'billing-recon approve {id} --actor YOU --reason "..."  (or reject)'),
    ("needs_invoice_adjustment", "keys outside Stripe's 35-day window: an invoice adjustment",
     "billing-recon report {id} --export-discrepancies drift.csv"),
    ("reconcile_failures", "keys that could not be reconciled (Stripe refused, no Stripe customer, bad rows)",
     "billing-recon report {id}"),
    ("unmetered_usage", "usage under a meter Stripe does not have: never billed", "billing-recon report {id}"),
    ("unsupported_meter", "usage under a count/last meter: not reconciled", "billing-recon report {id}"),
)
SHOWN_COUNTS = ("customers_scanned", "keys_checked", "drift_count", "counter_repairs", "orphan_counters",
                "corrections_pushed", "corrections_cancelled", "pending", "beyond_epsilon", "over_quota_transitions",
                "stale_skipped", "dedupe_count")


def needs_human(run_id: str, counts: Counts, *, awaiting: bool) -> list[str]:
    """One line per kind of finding a human must act on, with the command."""
    lines = []
    for field, what, command in HUMAN_FINDINGS:
        n = getattr(counts, field)
        if field == "held_for_approval" and not awaiting:
            continue  # once decided (or timed out), held corrections wait for nobody
        if n:
            lines.append(f"{n} {what}: `{command.format(id=run_id)}`")
    return lines


def progress_details(s: ReconcileCarry, *, paused: bool) -> str:
    """Current details while the run goes on: phase, pages, counts, what waits for a human."""
    ctx = s.context
    phase = s.phase.value + (" (paused: observe-only)" if paused else "")
    facts = [("phase", phase), ("mode", ctx.mode.value), ("window", f"{ctx.window_start}..{ctx.window_end}"),
             ("pages done", str(s.pages_done))]
    facts += [(name, str(getattr(s.counts, name))) for name in SHOWN_COUNTS if getattr(s.counts, name)]
    if s.verify_counts is not None:
        facts.append(("verify: drift left", str(s.verify_counts.drift_count)))
    awaiting = s.phase == Phase.AWAITING_APPROVAL and s.decision is None
    return render(f"ReconcileUsage {ctx.run_id}: {phase}", facts=facts,
                  needs_human=needs_human(ctx.run_id, s.counts, awaiting=awaiting),
                  actions=[("report", f"billing-recon report {ctx.run_id}")])


def result_details(r: ReconcileResult) -> str:
    """Current details of the finished run: its outcome, counts and what is left for a human."""
    outcome = outcome_of(r)
    facts = [("outcome", f"`{outcome.value}`"), ("status", r.status.value), ("mode", r.mode.value),
             ("window", f"{r.window_start}..{r.window_end}")]
    facts += [(name, str(getattr(r.counts, name))) for name in SHOWN_COUNTS if getattr(r.counts, name)]
    if r.verify_counts is not None:
        facts.append(("verify: drift left", str(r.verify_counts.drift_count)))
    return render(f"ReconcileUsage {r.run_id}: {outcome.value}", facts=facts,
                  needs_human=needs_human(r.run_id, r.counts, awaiting=False) + r.warnings,
                  actions=[("report", f"billing-recon report {r.run_id}")])


def outcome_of(r: ReconcileResult) -> Outcome:
    """`BillingOutcome` of a finished run."""
    if r.status == RunStatus.REJECTED:
        return Outcome.REJECTED
    if r.status == RunStatus.FAILED:
        return Outcome.FAILED
    if r.observe_only:
        return Outcome.OBSERVE_ONLY
    if needs_human(r.run_id, r.counts, awaiting=False):
        return Outcome.NEEDS_ATTENTION
    if not r.counts.drift_count:
        return Outcome.CLEAN
    return Outcome.DRIFT_FOUND if r.mode == Mode.DRY_RUN else Outcome.DRIFT_FIXED
