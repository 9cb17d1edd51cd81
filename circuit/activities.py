"""The circuit breaker's activities (Postgres, the Stripe gateway's probe, the Temporal client
to pause and resume auto-healing through AutoHealControl)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import asyncpg
import stripe
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from autoheal import switch
from autoheal.control import signal_autoheal
from billing.settings import Settings
from billing.stripe_gateway import StripeGateway
from circuit import store
from circuit.policy import Threshold, describe, should_open
from circuit.types import (
    CIRCUIT_ACTOR,
    AutohealSignal,
    CheckResult,
    CircuitState,
    ProbeResult,
    Transition,
)
from common.types import PauseRequest
from notify.outbox import emit
from notify.types import Notification, NotificationKind, Severity, dedupe_key

log = logging.getLogger(__name__)

PROBE_FAILED = "; probe failed: "


def episode(opened_at: datetime | None) -> str:
    """The subject of an open episode's notifications (opened, then closed)."""
    return f"stripe-circuit@{opened_at.isoformat() if opened_at else 'unknown'}"


class CircuitActivities:
    def __init__(self, pool: asyncpg.Pool, stripe_gateway: StripeGateway, settings: Settings, client: Client) -> None:
        self.pool = pool
        self.stripe = stripe_gateway
        self.settings = settings
        self.client = client

    def _threshold(self) -> Threshold:
        s = self.settings
        return Threshold(min_errors=s.stripe_circuit_min_errors, error_rate=s.stripe_circuit_error_rate)

    @activity.defn(name="circuit.check")
    async def check(self) -> CheckResult:
        """Closed: open it when the window's figures pass the threshold (and record the
        notification). Open for long enough: half-open, the workflow probes."""
        s = self.settings
        next_check = s.stripe_circuit_check_seconds
        async with self.pool.acquire() as conn, conn.transaction():
            row = await store.lock_state(conn)
            await store.prune(conn)
            if not s.stripe_circuit_enabled:
                if row.state == CircuitState.CLOSED:
                    return CheckResult(state=row.state, since=row.since, next_check_seconds=next_check)
                # Turned off while open: closed at once, and its own pause resumed.
                row = await store.set_state(conn, CircuitState.CLOSED, "circuit breaker disabled")
                sw = await switch.state(conn)
                return CheckResult(state=row.state, transition=Transition.CLOSED, reason=row.reason, since=row.since,
                                   next_check_seconds=next_check, resume=sw.paused and sw.actor == CIRCUIT_ACTOR)
            if row.state == CircuitState.CLOSED:
                figures = await store.figures(conn, s.stripe_circuit_window_seconds, row.since)
                if not should_open(figures, self._threshold()):
                    return CheckResult(state=row.state, since=row.since, next_check_seconds=next_check)
                reason = describe(figures, self._threshold())
                row = await store.set_state(conn, CircuitState.OPEN, reason, new_episode=True)
                log.error("%s: corrective writes go observe-only", reason)
                await emit(conn, Notification(
                    kind=NotificationKind.CIRCUIT_OPENED, subject=episode(row.opened_at), severity=Severity.CRITICAL,
                    title="Stripe circuit OPEN: auto-healing paused (observe-only)",
                    text=f"{reason}. Detection goes on; corrections resume when a probe succeeds "
                         f"(first probe in {s.stripe_circuit_open_seconds} s).",
                    commands=["billing-recon status"]))
                return CheckResult(state=row.state, transition=Transition.OPENED, reason=reason, since=row.since,
                                   next_check_seconds=next_check)
            if row.state == CircuitState.OPEN:
                now = await conn.fetchval("SELECT now()")
                if now - row.since < timedelta(seconds=s.stripe_circuit_open_seconds):
                    return CheckResult(state=row.state, since=row.since, reason=row.reason,
                                       next_check_seconds=next_check)
                row = await store.set_state(conn, CircuitState.HALF_OPEN, row.reason)
            # Half-open (also after a crash mid-probe): probe.
            return CheckResult(state=row.state, transition=Transition.HALF_OPEN, reason=row.reason, since=row.since,
                               next_check_seconds=next_check)

    @activity.defn(name="circuit.probe")
    async def probe(self) -> ProbeResult:
        """One cheap read. Any failure to answer is the answer (never raised)."""
        try:
            await self.stripe.probe()
        except (stripe.StripeError, ApplicationError) as e:
            return ProbeResult(ok=False, error=f"{type(e).__name__}: {getattr(e, 'user_message', None) or e}")
        return ProbeResult(ok=True)

    @activity.defn(name="circuit.record_probe")
    async def record_probe(self, probe: ProbeResult) -> CheckResult:
        next_check = self.settings.stripe_circuit_check_seconds
        async with self.pool.acquire() as conn, conn.transaction():
            row = await store.lock_state(conn)
            if row.state != CircuitState.HALF_OPEN:  # a retried activity: decided already
                return CheckResult(state=row.state, since=row.since, reason=row.reason, next_check_seconds=next_check)
            if not probe.ok:
                # The figures that opened it, and the latest probe's failure (not every one).
                opened_by = (row.reason or "").split(PROBE_FAILED)[0]
                row = await store.set_state(conn, CircuitState.OPEN, f"{opened_by}{PROBE_FAILED}{probe.error}")
                log.warning("Stripe circuit stays open: probe failed: %s", probe.error)
                return CheckResult(state=row.state, transition=Transition.REOPENED, reason=row.reason,
                                   since=row.since, next_check_seconds=next_check)
            opened = row.opened_at
            row = await store.set_state(conn, CircuitState.CLOSED, "probe succeeded")
            sw = await switch.state(conn)
            resume = sw.paused and sw.actor == CIRCUIT_ACTOR
            log.warning("Stripe circuit closed: probe succeeded%s",
                        "; resuming auto-healing" if resume else "")
            await emit(conn, Notification(
                kind=NotificationKind.CIRCUIT_CLOSED, subject=episode(opened), severity=Severity.INFO,
                title="Stripe circuit closed" + (": auto-healing resumed" if resume else ""),
                text=("A probe of Stripe succeeded; corrective writes resume."
                      if resume else f"A probe of Stripe succeeded. Auto-healing is "
                      f"{'still PAUSED by ' + str(sw.actor) if sw.paused else 'not paused'}: not the circuit's pause, "
                      "left alone."),
                commands=["billing-recon status"],
                resolves=dedupe_key(episode(opened), NotificationKind.CIRCUIT_OPENED)))
            return CheckResult(state=row.state, transition=Transition.CLOSED, reason=row.reason, since=row.since,
                               next_check_seconds=next_check, resume=resume)

    @activity.defn(name="circuit.pause_autoheal")
    async def pause_autoheal(self, inp: AutohealSignal) -> None:
        """The existing pause, as actor circuit-breaker (audited by AutoHealControl). A pause
        already in force by someone else stays theirs."""
        before = await switch.state(self.pool)
        await signal_autoheal(self.client, self.settings.task_queue, True,
                              PauseRequest(actor=CIRCUIT_ACTOR, reason=inp.reason))
        await store.mark_paused_by_circuit(self.pool, not before.paused)

    @activity.defn(name="circuit.resume_autoheal")
    async def resume_autoheal(self, inp: AutohealSignal) -> None:
        """Resume only the circuit's own pause: AutoHealControl applies it only while the pause
        in force is still circuit-breaker's (an operator may have taken it over meanwhile)."""
        await signal_autoheal(self.client, self.settings.task_queue, False,
                              PauseRequest(actor=CIRCUIT_ACTOR, reason=inp.reason, only_if_paused_by=CIRCUIT_ACTOR))
        await store.mark_paused_by_circuit(self.pool, False)
