"""How a workflow of this project reports what failed underneath it: an activity's or a child
workflow's own message and error type (e.g. UnknownCustomer, NegativeBalance), not "activity
task failed" or "child workflow execution failed", so the starter, the CLI and the UI show the
cause. `permanent_failure` fails the workflow with them, non-retryably."""

from __future__ import annotations

from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

# An activity's failure, or a child workflow's: both wrap the cause that matters.
Underneath = ActivityError | ChildWorkflowError


def failure_message(e: Underneath) -> str:
    """The message of what failed underneath `e` (its cause's own message)."""
    cause = e.cause
    return getattr(cause, "message", None) or str(cause or e)


def failure_type(e: Underneath) -> str | None:
    """The `ApplicationError.type` of what failed underneath `e`, if it has one."""
    cause = e.cause
    return cause.type if isinstance(cause, ApplicationError) else None


def permanent_failure(e: Underneath, default_type: str) -> ApplicationError:
    """Fail the workflow with the cause's message and type (else `default_type`), for good."""
    return ApplicationError(failure_message(e), type=failure_type(e) or default_type, non_retryable=True)


def permanent_in_group(group: BaseExceptionGroup) -> ApplicationError | None:
    """The first non-retryable ApplicationError in a TaskGroup's group (at any depth), if any:
    raised instead of the group, it fails the activity for good (a group is retried, forever)."""
    for e in group.exceptions:
        if isinstance(e, ApplicationError) and e.non_retryable:
            return e
        if isinstance(e, BaseExceptionGroup) and (found := permanent_in_group(e)) is not None:
            return found
    return None
