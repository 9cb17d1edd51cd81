"""The daily checks' gauges, from their last stored results (billing.metrics_collector refreshes
them with the other Postgres-derived gauges, so every worker exports the same values)."""

from __future__ import annotations

from typing import Any

from billing import metrics
from checks.types import CheckName


def publish(last: list[dict[str, Any]]) -> None:
    """`last`: `checks.store.last_results`. A check never run yet is 0 (not failed); the
    last-run timestamp is then 0, which BillingDailyChecksMissing alerts on."""
    by_check = {r["check_name"]: r for r in last}
    for check in CheckName:
        row = by_check.get(check.value)
        metrics.set_gauge(metrics.DAILY_CHECK_FAILED, 0.0 if row is None or row["passed"] else 1.0,
                          {"check": check.value})
        metrics.set_gauge(metrics.DAILY_CHECK_FINDINGS, float(row["findings"]) if row else 0.0,
                          {"check": check.value})
    finished = max((r["finished_at"] for r in last), default=None)
    metrics.set_gauge(metrics.DAILY_CHECKS_LAST_RUN, finished.timestamp() if finished else 0.0)
