"""Meter events: ``POST /v1/billing/meter_events`` (validated, deduplicated by identifier,
counted later by summaries; an unknown customer is accepted and reported through a
``v1.billing.meter.error_report_triggered`` event), and the admin bulk seed."""

from __future__ import annotations

import random
import re
import secrets
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

from ..config import DAY
from ..errors import StripeError, invalid, missing
from ..meter_event_log import MeterEventRecord
from ..params import to_int
from ..state import RequestContext, Store
from .base import Params, Route, active_meter
from .customers import bare_customer
from .event_destinations import emit_thin, iso

TIMESTAMP_PAST_LIMIT = 35 * DAY
TIMESTAMP_FUTURE_LIMIT = 5 * 60
MAX_IDENTIFIER = 100
_NUMBER_RE = re.compile(r"^-?(\d+(\.\d*)?|\.\d+)$")
_ID_BITS = random.Random(secrets.randbits(64))


def create_meter_event(s: Store, ctx: RequestContext | None, p: Params) -> dict[str, Any]:
    event_name = p.get("event_name")
    if not event_name:
        raise missing("event_name")
    payload = p.get("payload")
    if not isinstance(payload, dict) or not payload:
        raise missing("payload")
    now = s.now()
    ts_raw = p.get("timestamp")
    timestamp = now if ts_raw in (None, "") else to_int(ts_raw, "timestamp")
    if timestamp < now - TIMESTAMP_PAST_LIMIT:
        raise invalid(
            "The event timestamp cannot be more than 35 days in past. "
            f"Received timestamp {timestamp}; provide a timestamp within the last 35 days.",
            "timestamp",
            "timestamp_too_far_in_past",
        )
    if timestamp > now + TIMESTAMP_FUTURE_LIMIT:
        raise invalid(
            "The event timestamp cannot be more than 5 minutes in the future. "
            f"Received timestamp {timestamp}.",
            "timestamp",
            "timestamp_too_far_in_future",
        )
    identifier = p.get("identifier") or None
    if identifier is not None and len(identifier) > MAX_IDENTIFIER:
        raise invalid(
            f"identifier must be at most {MAX_IDENTIFIER} characters.",
            "identifier",
            "parameter_invalid_string",
        )
    meter = active_meter(s, event_name)
    cust_key = meter["customer_mapping"]["event_payload_key"]
    val_key = meter["value_settings"]["event_payload_key"]
    customer = payload.get(cust_key)
    if not customer or not isinstance(customer, str):
        raise invalid(
            f"Missing required payload key: {cust_key}.",
            f"payload[{cust_key}]",
            "parameter_missing",
        )
    value_str = payload.get(val_key)
    formula = meter["default_aggregation"]["formula"]
    if value_str is None:
        if formula != "count":
            raise invalid(
                f"Missing required payload key: {val_key}.",
                f"payload[{val_key}]",
                "parameter_missing",
            )
        value = 1.0
    else:
        value = _parse_value(value_str, val_key)
    if identifier is not None:
        prior = s.meter_events.by_identifier.get(identifier)
        if prior is not None and prior.created > now - s.config.identifier_dedupe_seconds:
            raise StripeError(
                400,
                f"An event already exists with identifier {identifier}.",
                param="identifier",
                code="resource_already_exists",
                headers={"Stripe-Should-Retry": "false"},
            )
    else:
        identifier = str(uuid.UUID(int=_ID_BITS.getrandbits(128), version=4))
    extra = {k: v for k, v in payload.items() if k not in (cust_key, val_key)} or None
    counted = customer in s.col("customer").objects
    rec = s.meter_events.add(
        MeterEventRecord(
            identifier,
            event_name,
            customer,
            value_str,
            value,
            timestamp,
            now,
            counted,
            (cust_key, val_key),
            extra,
        )
    )
    if not counted:
        s.emit(
            "v1.billing.meter.error_report_triggered",
            {
                "object": "billing.meter_error_report",
                "meter": meter["id"],
                "reason": {
                    "error_code": "meter_event_customer_not_found",
                    "error_message": f"No customer found for {cust_key} {customer}.",
                },
                "event_identifier": identifier,
                "validation_start": now,
                "validation_end": now,
            },
            ctx,
            explicit_only=True,
        )
        # What Stripe really sends: a thin event to event destinations (FACTS, "Async meter errors").
        message = f"No customer found for {cust_key} {customer}."
        emit_thin(s, "v1.billing.meter.error_report_triggered",
                  {"id": meter["id"], "type": "billing.meter", "url": f"/v1/billing/meters/{meter['id']}"},
                  {"developer_message_summary": "There is 1 invalid event",
                   "reason": {"error_count": 1, "error_types": [{
                       "code": "meter_event_customer_not_found", "error_count": 1,
                       "sample_errors": [{"error_message": message, "request": {"identifier": identifier}}]}]},
                   "validation_start": iso(now), "validation_end": iso(now)})
    return {
        "object": "billing.meter_event",
        "created": rec.created,
        "event_name": event_name,
        "identifier": identifier,
        "livemode": False,
        "payload": rec.payload(),
        "timestamp": timestamp,
    }


def _parse_value(value_str: Any, val_key: str) -> float:
    if not isinstance(value_str, str) or not _NUMBER_RE.match(value_str.strip()):
        raise invalid(
            f"Invalid value for payload[{val_key}]: must be a whole number or a decimal "
            f"number represented as a string. Received: {value_str!r}",
            f"payload[{val_key}]",
            "parameter_invalid_string",
        )
    try:
        return float(Decimal(value_str.strip()))
    except InvalidOperation:  # pragma: no cover - regex guards this
        raise invalid(f"Invalid value for payload[{val_key}]", f"payload[{val_key}]") from None


def seed_meter_events(s: Store, events: list[dict[str, Any]]) -> int:
    """Admin bulk insert (``/_emulator/meter_events/bulk``): no rate limit, no dedupe or timestamp
    checks; unknown customers are created."""
    customers = s.col("customer")
    now = s.now()
    n = 0
    for e in events:
        meter = s.meters_by_event_name.get(e["event_name"])
        if meter is None:
            raise ValueError(f"no meter for event name {e['event_name']}")
        cust_key = meter["customer_mapping"]["event_payload_key"]
        val_key = meter["value_settings"]["event_payload_key"]
        payload = e.get("payload") or {}
        customer = payload.get(cust_key) or e.get("customer")
        if not customer:
            raise ValueError(f"seed event without a customer: {e!r}"[:200])
        customer = str(customer)
        value_str = str(payload.get(val_key, e.get("value", "1")))
        if customer not in customers.objects:
            customers.add(bare_customer(customer, now))
        ident = (
            e.get("identifier") or f"seed_{len(s.meter_events.all)}_{_ID_BITS.getrandbits(40):010x}"
        )
        s.meter_events.add(
            MeterEventRecord(
                ident,
                e["event_name"],
                customer,
                value_str,
                _parse_value(value_str, val_key),
                int(e.get("timestamp", now)),
                int(e.get("created", now)),
                True,
                (cust_key, val_key),
                None,
            )
        )
        n += 1
    return n


ROUTES = (Route("POST", "/v1/billing/meter_events", create_meter_event),)
