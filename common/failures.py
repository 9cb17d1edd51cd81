"""How a workflow of this project fails when an activity has failed for good: with the
activity's own message and error type (e.g. UnknownCustomer, NegativeBalance), non-retryably,
so the starter, the CLI and the UI show the cause instead of "activity task failed"."""

from __future__ import annotations

from temporalio.exceptions import ActivityError, ApplicationError


def activity_message(e: ActivityError) -> str:
    cause = e.cause
    return getattr(cause, "message", None) or str(cause or e)


def permanent_failure(e: ActivityError, default_type: str) -> ApplicationError:
    return ApplicationError(activity_message(e), type=getattr(e.cause, "type", None) or default_type,
                            non_retryable=True)
