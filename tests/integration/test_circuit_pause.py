"""The circuit breaker never resumes an operator's pause: an operator who pauses while the
circuit's pause is in force takes it over (`billing-recon pause` says PAUSED by them), and the
circuit's resume (conditional on its own pause) then changes nothing. `status` shows the circuit."""

from __future__ import annotations

import asyncio
import json

import pytest
from temporalio.service import RPCError

from autoheal.control import signal_autoheal
from autoheal.workflow import AutoHealControl
from circuit.types import CIRCUIT_ACTOR
from common.types import PauseRequest
from tests.integration.autoheal_helpers import global_switch
from tests.integration.cli_helpers import cli
from tests.integration.recon_helpers import make_settings, running_worker

pytestmark = pytest.mark.integration


async def _wait_actor(handle, actor: str, paused: bool) -> None:
    s = None
    for _ in range(150):
        try:
            s = await handle.query(AutoHealControl.state)
        except RPCError:  # a loaded machine: the first workflow task may not have run yet
            s = None
        if s is not None and s.paused == paused and s.actor == actor:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"switch never {paused} by {actor}: {s}")


async def test_an_operator_pause_taken_over_from_the_circuit_is_never_resumed_by_it(
    cli_env, temporal_env, postgres_dsn, emulator, task_queue, clean_db,
):
    client = temporal_env.client
    async with global_switch(client, clean_db), \
            running_worker(client, make_settings(postgres_dsn, emulator), task_queue):
        await clean_db.execute(
            "INSERT INTO billing.stripe_circuit (id, state, since, opened_at, reason) "
            "VALUES (true, 'open', now(), now(), 'Stripe circuit open: 30 errors in 30 requests (100%) over 60 s') "
            "ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, reason = EXCLUDED.reason")
        handle = await signal_autoheal(client, task_queue, True, PauseRequest(actor=CIRCUIT_ACTOR, reason="figures"))
        await _wait_actor(handle, CIRCUIT_ACTOR, True)

        code, out, err = await cli(cli_env, "status")
        assert code == 0, err
        assert "Stripe circuit OPEN since" in out and "30 errors in 30 requests" in out
        code, out, _ = await cli(cli_env, "status", "--json")
        assert json.loads(out)["stripe_circuit"]["state"] == "open"

        # The operator's pause takes the circuit's over.
        code, out, err = await cli(cli_env, "pause", "--reason", "incident 7", "--actor", "alice")
        assert code == 0, err
        assert "PAUSED by alice: incident 7" in out
        # The circuit closes and resumes its own pause only: alice's stays.
        await signal_autoheal(client, task_queue, False, PauseRequest(
            actor=CIRCUIT_ACTOR, reason="probe succeeded", only_if_paused_by=CIRCUIT_ACTOR))
        # AutoHealControl handles signals in order: alice's resume comes after the circuit's,
        # and finds her pause still in force (had the circuit's applied, hers would say "not
        # paused; nothing changed" and the audit would show the circuit resuming).
        code, out, err = await cli(cli_env, "resume", "--reason", "over", "--actor", "alice")
        assert code == 0 and "resumed by alice" in out, (out, err)
        audit = await clean_db.fetch(
            "SELECT action, actor FROM billing.audit_log WHERE entity_type = 'autoheal' ORDER BY at, id")
        assert [(r["action"], r["actor"]) for r in audit] == [
            ("autoheal.pause", CIRCUIT_ACTOR), ("autoheal.pause", "alice"), ("autoheal.resume", "alice")]


async def test_turning_the_breaker_off_while_open_closes_it_and_resumes_only_its_own_pause(
    clean_db, postgres_dsn, emulator, temporal_env,
):
    from billing.stripe_gateway import StripeGateway, make_stripe_client
    from circuit.activities import CircuitActivities
    from circuit.types import Transition
    from tests.integration.recon_helpers import make_settings

    settings = make_settings(postgres_dsn, emulator, STRIPE_CIRCUIT_ENABLED=False)
    acts = CircuitActivities(clean_db, StripeGateway(make_stripe_client(settings), None), settings, temporal_env.client)
    try:
        for actor, resume in ((CIRCUIT_ACTOR, True), ("alice", False)):
            await clean_db.execute(
                "INSERT INTO billing.stripe_circuit (id, state, opened_at, reason) VALUES (true, 'open', now(), 'x') "
                "ON CONFLICT (id) DO UPDATE SET state = 'open', reason = 'x'")
            await clean_db.execute(
                "INSERT INTO billing.autoheal_state (id, paused, since, actor) VALUES (true, true, now(), $1) "
                "ON CONFLICT (id) DO UPDATE SET paused = true, since = now(), actor = $1", actor)
            res = await acts.check()
            assert (res.state.value, res.transition, res.resume) == ("closed", Transition.CLOSED, resume), actor
            assert (await acts.check()).transition == Transition.NONE  # closed now: nothing more
    finally:
        await clean_db.execute("UPDATE billing.autoheal_state SET paused = false")
