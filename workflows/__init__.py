"""Every job package and the workflows they export: the one list the worker registers.

A job lives in ONE package at the top level (its `types.py`, workflow module(s) and
`activities.py`); docs/architecture.md has the map."""

from __future__ import annotations

from types import ModuleType

import allocations
import autoheal
import backfill
import checks
import circuit
import credits
import customer
import health
import notify
import readback
import reconcile
import resync
import revenue
import webhooks

JOBS: tuple[ModuleType, ...] = (
    reconcile, webhooks, backfill, autoheal, resync, credits, health, allocations, customer, revenue, checks,
)
JOBS += (notify, circuit, readback)


def all_workflows() -> list[type]:
    return [wf for job in JOBS for wf in job.workflows()]
