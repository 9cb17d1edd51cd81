"""What a workflow reports when an activity or a child workflow failed (common/failures.py)."""

from __future__ import annotations

from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, RetryState

from common.failures import failure_message, failure_type, permanent_failure


def activity_failed(cause: BaseException | None) -> ActivityError:
    e = ActivityError("activity task failed", scheduled_event_id=5, started_event_id=6, identity="w",
                      activity_type="credits.adjust", activity_id="1", retry_state=RetryState.NON_RETRYABLE_FAILURE)
    e.__cause__ = cause
    return e


def child_failed(cause: BaseException | None) -> ChildWorkflowError:
    e = ChildWorkflowError("child workflow execution failed", namespace="default", workflow_id="day-1",
                           run_id="r", workflow_type="ReconcileUsage", initiated_event_id=3, started_event_id=4,
                           retry_state=RetryState.NON_RETRYABLE_FAILURE)
    e.__cause__ = cause
    return e


def test_the_message_and_type_are_the_causes():
    for e in (activity_failed(ApplicationError("unknown customer: x", type="UnknownCustomer")),
              child_failed(ApplicationError("unknown customer: x", type="UnknownCustomer"))):
        assert (failure_message(e), failure_type(e)) == ("unknown customer: x", "UnknownCustomer")


def test_a_cause_without_a_type_fails_with_the_default_type_permanently():
    e = child_failed(RuntimeError("boom"))
    assert (failure_message(e), failure_type(e)) == ("boom", None)
    failed = permanent_failure(e, "BackfillFailed")
    assert (failed.message, failed.type, failed.non_retryable) == ("boom", "BackfillFailed", True)


def test_without_a_cause_the_error_itself_is_the_message():
    assert failure_message(activity_failed(None)) == "activity task failed"
