"""What activities are built from: one object the worker creates once and hands to every job
package's `build_activities`, so no job reaches for a global."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from temporalio.client import Client

from billing.settings import Settings
from billing.stripe_gateway import StripeGateway


@dataclass(frozen=True)
class Dependencies:
    pool: asyncpg.Pool
    stripe: StripeGateway
    settings: Settings
    temporal: Client


def activity_methods(*holders: object) -> list[Callable[..., Any]]:
    """Every `@activity.defn` method of the given activity objects: a job exports all of its
    activities by construction, never through a hand-kept list."""
    found: list[Callable[..., Any]] = []
    for holder in holders:
        for name in dir(type(holder)):
            if hasattr(getattr(type(holder), name), "__temporal_activity_definition"):
                found.append(getattr(holder, name))
    return found
