"""Smoke: the stack's health check result.

Workflows build these: no default factories that read clocks or randomness."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SmokeCheck(BaseModel):
    migrations_applied: int | None = None
    customers: int | None = None
    stripe_meters: list[str] = Field(default_factory=list)
