"""The Stripe resources the emulator serves: one module per resource, each ending with its
``ROUTES`` (see ``base.py`` for the shape). ``app.build_router`` serves ``ROUTES``."""

from __future__ import annotations

from . import (
    checkout_sessions,
    customers,
    events,
    invoices,
    meter_event_adjustments,
    meter_event_summaries,
    meter_events,
    meters,
    prices,
    products,
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
    invoices,
    checkout_sessions,
    webhook_endpoints,
    events,
)

ROUTES: tuple[Route, ...] = tuple(route for module in RESOURCES for route in module.ROUTES)

__all__ = ["RESOURCES", "ROUTES", "Route"]
