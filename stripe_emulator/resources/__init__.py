"""The Stripe resources the emulator serves: one module per resource, each ending with its
``ROUTES`` (see ``base.py`` for the shape). ``app.build_router`` serves ``ROUTES``."""

from __future__ import annotations

from . import (
    balance_transactions,
    charges,
    checkout_sessions,
    credit_notes,
    customer_balance_transactions,
    customers,
    event_destinations,
    events,
    invoice_payments,
    invoiceitems,
    invoices,
    meter_event_adjustments,
    meter_event_summaries,
    meter_events,
    meters,
    prices,
    products,
    refunds,
    subscription_items,
    subscriptions,
    webhook_endpoints,
)
from .base import Route

RESOURCES = (
    meters,
    meter_events,
    meter_event_adjustments,
    meter_event_summaries,
    customers,
    products,
    prices,
    subscriptions,
    subscription_items,
    invoiceitems,
    invoices,
    checkout_sessions,
    webhook_endpoints,
    event_destinations,
    events,
    invoice_payments,
    charges,
    refunds,
    balance_transactions,
    credit_notes,
    customer_balance_transactions,
)

ROUTES: tuple[Route, ...] = tuple(route for module in RESOURCES for route in module.ROUTES)

__all__ = ["RESOURCES", "ROUTES", "Route"]
