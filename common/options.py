"""Activity options, once for every job: timeouts, retry policies and non-retryable error types,
named by what an activity is (a short step, a page that heartbeats, a listing, a report query).

A workflow passes them as keyword arguments:

    await workflow.execute_activity_method(Acts.page, inp, **heartbeat_page(*PERMANENT_ERRORS))

Every option set carries a start-to-close timeout; those of activities that loop carry a
heartbeat timeout too (their activities heartbeat through `common.heartbeat.Heartbeater`). The
error types listed are raised by the activities non-retryably already; listing them in the
policy as well keeps a retry from ever happening on them, whatever raises them.

Timeouts and retry policies are not part of what a replay checks: changing them never breaks
a running workflow."""

from __future__ import annotations

from datetime import timedelta
from typing import TypedDict

from temporalio.common import RetryPolicy


class ActivityOptions(TypedDict, total=False):
    """The keyword arguments of `workflow.execute_activity_method` this module fills."""

    start_to_close_timeout: timedelta
    heartbeat_timeout: timedelta
    retry_policy: RetryPolicy


# A step of a few Postgres statements, or one Stripe call under the rate limiter (and the SDK's
# own retries): far below this. Only a worker that died mid-step makes the step wait this long.
SHORT_STEP_TIMEOUT = timedelta(minutes=2)
# A page of work (many Stripe calls under the rate limiter, or a long query).
PAGE_TIMEOUT = timedelta(minutes=30)
# All of a listing in one activity (e.g. Stripe's events of a replay window).
LISTING_TIMEOUT = timedelta(hours=1)
# A page that heartbeats is handed to another worker after at most this long without one. The
# Heartbeater beats every second, so a live activity never comes near it.
HEARTBEAT_TIMEOUT = timedelta(seconds=30)

# Transient failures (Stripe 429/5xx, connections, a Postgres restart) retry forever, backing
# off from 1 s to at most 1 min between attempts.
RETRY_INITIAL_INTERVAL = timedelta(seconds=1)
RETRY_MAXIMUM_INTERVAL = timedelta(minutes=1)


def retry_policy(*non_retryable: str) -> RetryPolicy:
    """The retry policy of every activity here: transient errors retry with backoff; the given
    `ApplicationError` types never do."""
    return RetryPolicy(initial_interval=RETRY_INITIAL_INTERVAL, backoff_coefficient=2.0,
                       maximum_interval=RETRY_MAXIMUM_INTERVAL,
                       non_retryable_error_types=list(non_retryable) or None)


def short_step(*non_retryable: str) -> ActivityOptions:
    """A short Postgres step (start a run, set a status, read a switch, audit, clean up)."""
    return {"start_to_close_timeout": SHORT_STEP_TIMEOUT, "retry_policy": retry_policy(*non_retryable)}


def heartbeat_page(*non_retryable: str) -> ActivityOptions:
    """A page of work that heartbeats its checkpoint and resumes from it after a retry."""
    return {"start_to_close_timeout": PAGE_TIMEOUT, "heartbeat_timeout": HEARTBEAT_TIMEOUT,
            "retry_policy": retry_policy(*non_retryable)}


def heartbeat_listing(*non_retryable: str) -> ActivityOptions:
    """A whole listing in one activity, heartbeating its cursor page by page."""
    return {"start_to_close_timeout": LISTING_TIMEOUT, "heartbeat_timeout": HEARTBEAT_TIMEOUT,
            "retry_policy": retry_policy(*non_retryable)}


def report_query(*non_retryable: str) -> ActivityOptions:
    """One long read-only report query (no loop, so no heartbeat): retried whole."""
    return {"start_to_close_timeout": PAGE_TIMEOUT, "retry_policy": retry_policy(*non_retryable)}


def webhook_event(*non_retryable: str) -> ActivityOptions:
    """One Stripe event through its handler (ProcessStripeEvent): about 10 minutes of retries
    for a Stripe or Postgres outage; after that the event is marked failed and the replay sweep
    owns it."""
    return {"start_to_close_timeout": timedelta(minutes=1),
            "retry_policy": RetryPolicy(initial_interval=RETRY_INITIAL_INTERVAL, backoff_coefficient=2.0,
                                        maximum_interval=timedelta(minutes=2), maximum_attempts=10,
                                        non_retryable_error_types=list(non_retryable) or None)}


def smoke_check() -> ActivityOptions:
    """A step of the deployment smoke check: it answers quickly, or fails with the cause after
    a few tries (it never retries forever)."""
    return {"start_to_close_timeout": timedelta(seconds=30),
            "retry_policy": RetryPolicy(initial_interval=RETRY_INITIAL_INTERVAL, maximum_attempts=3)}


# An external ping (the dead-man's switch): a few quick tries, then the run goes on without it.
PING_TIMEOUT = timedelta(seconds=30)
PING_MAXIMUM_ATTEMPTS = 5


def external_ping(*non_retryable: str) -> ActivityOptions:
    """A best-effort call to an outside service: bounded retries; the caller never fails on it."""
    return {"start_to_close_timeout": PING_TIMEOUT,
            "retry_policy": RetryPolicy(initial_interval=RETRY_INITIAL_INTERVAL, backoff_coefficient=2.0,
                                        maximum_interval=PING_TIMEOUT, maximum_attempts=PING_MAXIMUM_ATTEMPTS,
                                        non_retryable_error_types=list(non_retryable) or None)}
