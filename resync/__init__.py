"""Mirror resyncs: ResyncSubscriptions (billing.subscriptions) and ResyncInvoices (billing.invoices), each compared with Stripe and fixed field by field, audited.

Exports `workflows()` and `build_activities(deps)`: the worker registers what every job
package exports (see workflows/ and activities/). Imports are inside the functions so that
importing a job's types (the workflow sandbox does) never pulls in asyncpg or stripe."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.deps import Dependencies


def workflows() -> list[type]:
    from resync.invoices_workflow import ResyncInvoices
    from resync.workflow import ResyncSubscriptions

    return [ResyncSubscriptions, ResyncInvoices]


def build_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    from common.deps import activity_methods
    from resync.activities import ResyncActivities
    from resync.invoice_activities import InvoiceResyncActivities
    from webhooks.activities import StripeEventActivities

    return activity_methods(ResyncActivities(deps.pool, deps.stripe, StripeEventActivities(deps.pool, deps.stripe)),
                            InvoiceResyncActivities(deps.pool, deps.stripe))
