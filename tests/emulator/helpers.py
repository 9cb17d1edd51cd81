"""Helpers the emulator tests share (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

from typing import Any

import stripe

from devstack.processes import free_port  # noqa: F401  (re-exported for the emulator tests)

API_KEY = "sk_test_emulator_contract"


def make_client(url: str, retries: int = 0) -> stripe.StripeClient:
    return stripe.StripeClient(
        API_KEY, base_addresses={"api": url, "meter_events": url}, max_network_retries=retries
    )


async def make_meter(
    client: stripe.StripeClient, event_name: str = "api_calls", formula: str = "sum"
) -> Any:
    return await client.v1.billing.meters.create_async(
        params={
            "display_name": f"{event_name} meter",
            "event_name": event_name,
            "default_aggregation": {"formula": formula},
        }
    )


async def make_customer(client: stripe.StripeClient, email: str = "c@example.com") -> Any:
    return await client.v1.customers.create_async(params={"email": email})


async def push(
    client: stripe.StripeClient,
    customer: str,
    value: str = "1",
    *,
    event_name: str = "api_calls",
    identifier: str | None = None,
    timestamp: int | None = None,
) -> Any:
    params: dict[str, Any] = {
        "event_name": event_name,
        "payload": {"stripe_customer_id": customer, "value": value},
    }
    if identifier is not None:
        params["identifier"] = identifier
    if timestamp is not None:
        params["timestamp"] = timestamp
    return await client.v1.billing.meter_events.create_async(params=params)


async def day_total(client: stripe.StripeClient, meter_id: str, customer: str, now: int) -> float:
    start = now - now % 86400
    page = await client.v1.billing.meters.event_summaries.list_async(
        meter_id,
        params={
            "customer": customer,
            "start_time": start,
            "end_time": start + 86400,
            "value_grouping_window": "day",
        },
    )
    assert len(page.data) == 1
    return page.data[0].aggregated_value


def assert_keys(obj, fixture: dict, kind: str) -> None:
    data = obj.to_dict() if hasattr(obj, "to_dict") else obj
    missing = set(fixture) - set(data)
    assert not missing, f"{kind} lacks {sorted(missing)}"
    if "livemode" in data:
        assert data["livemode"] is False
    if "object" in fixture and kind != "deleted_customer":
        assert data["object"] == fixture["object"]
