"""`pause`/`resume`, `status`, `audit`, `backfill` and `schedules` as an operator runs them."""

from __future__ import annotations

import contextlib
import json

import pytest

from autoheal.types import AUTOHEAL_WORKFLOW_ID
from tests.integration.cli_helpers import cli
from tests.integration.recon_helpers import make_settings, running_worker

pytestmark = pytest.mark.integration


async def test_global_pause_resume_status_and_audit(cli_env, temporal_env, postgres_dsn, emulator,  # noqa: F811
                                                    task_queue, clean_db):
    code, _, err = await cli(cli_env, "pause")
    assert code == 2 and "needs --reason" in err
    try:
        async with running_worker(temporal_env.client, make_settings(postgres_dsn, emulator), task_queue):
            code, out, err = await cli(cli_env, "pause", "--reason", "incident 42", "--actor", "alice")
            assert code == 0, err
            assert "PAUSED by alice: incident 42" in out
            # Pausing again: nothing is sent or audited, the pause in force is kept, exit 0.
            code, out, err = await cli(cli_env, "pause", "--reason", "again", "--actor", "carol")
            assert code == 0, err
            assert "already PAUSED" in out and "by alice: incident 42; nothing changed" in out
            code, out, _ = await cli(cli_env, "status", "--json")
            status = json.loads(out)
            assert status["autoheal"]["paused"] is True and status["autoheal"]["actor"] == "alice"
            assert status["temporal"] == "ok"
            assert status["last_successful_reconciliation"] is None
            code, out, _ = await cli(cli_env, "status")
            assert code == 0 and "PAUSED" in out and "last successful reconciliation: none" in out

            code, out, err = await cli(cli_env, "resume", "--actor", "bob", "--reason", "closed")
            assert code == 0, err
            code, out, err = await cli(cli_env, "resume", "--actor", "carol")
            assert code == 0 and "not paused; nothing changed" in out, err
        code, out, _ = await cli(cli_env, "audit", "--json", "--since", "1d")
        rows = json.loads(out)
        assert [(r["action"], r["actor"], r["reason"]) for r in rows] == [
            ("autoheal.resume", "bob", "closed"), ("autoheal.pause", "alice", "incident 42")]
        assert rows[0]["before"] == {"paused": True} and rows[0]["after"] == {"paused": False}
        assert rows[0]["link"].endswith(f"/workflows/{AUTOHEAL_WORKFLOW_ID}/{rows[0]['run_id']}/history")
        code, out, _ = await cli(cli_env, "audit", "--customer", "nobody", "--json")
        assert code == 0 and json.loads(out) == []
        code, _, err = await cli(cli_env, "audit", "--since", "last week")
        assert code == 2 and "not a time" in err
    finally:
        await clean_db.execute("UPDATE billing.autoheal_state SET paused = false")
        with contextlib.suppress(Exception):
            await temporal_env.client.get_workflow_handle(AUTOHEAL_WORKFLOW_ID).terminate("test done")


async def test_backfill_and_schedules_refuse_bad_input(cli_env, tmp_path):  # noqa: F811
    code, _, err = await cli(cli_env, "backfill", "--start-date", "2026-11-10", "--end-date", "2026-11-01")
    assert code == 2 and "before start_date" in err
    code, _, err = await cli(cli_env, "backfill", "--start-date", "2099-01-01", "--end-date", "2099-01-02")
    assert code == 2 and "in the future" in err
    code, _, err = await cli(cli_env, "backfill", "--start-date", "yesterday", "--end-date", "2026-11-01")
    assert code == 2 and "'yesterday' is not a day" in err
    bad = tmp_path / "s.toml"
    bad.write_text('[schedules.x]\nworkflow = "ReconcileUsage"\nnote = "n"\nevery = "often"\nexecution_timeout = "1h"\n')
    code, _, err = await cli(cli_env, "schedules", "apply", "--file", str(bad))
    assert code == 2 and "not a duration" in err


async def test_schedules_apply_bounds_every_run_and_refuses_an_unbounded_one(cli_env, temporal_env, tmp_path):  # noqa: F811
    """`schedules apply` as an operator runs it: the execution timeout is on the schedule's
    action (describe shows it); a schedule without one, or one shorter than the run's approval
    wait, is refused with exit 2 and nothing is created."""
    import uuid
    from datetime import timedelta

    name = f"sync-{uuid.uuid4().hex[:6]}"
    f = tmp_path / "s.toml"
    f.write_text(f'[schedules.{name}]\nworkflow = "ReconcileUsage"\nnote = "n"\nevery = "5m"\npaused = true\n'
                 'execution_timeout = "45m"\ninput = { mode = "apply", approval_timeout_seconds = 600 }\n')
    code, out, err = await cli(cli_env, "schedules", "apply", "--file", str(f))
    assert code == 0, err
    handle = temporal_env.client.get_schedule_handle(f"billing-{name}")
    try:
        desc = await handle.describe()
        assert desc.schedule.action.execution_timeout == timedelta(minutes=45)
    finally:
        await handle.delete()

    unbounded = tmp_path / "u.toml"
    unbounded.write_text(f'[schedules.{name}-u]\nworkflow = "ReconcileUsage"\nnote = "n"\nevery = "5m"\n')
    code, _, err = await cli(cli_env, "schedules", "apply", "--file", str(unbounded))
    assert code == 2 and "execution_timeout" in err and err.count("\n") == 1, err
    waiting = tmp_path / "w.toml"
    waiting.write_text(f'[schedules.{name}-w]\nworkflow = "ReconcileUsage"\nnote = "n"\nevery = "5m"\n'
                       'execution_timeout = "1h"\n')
    code, _, err = await cli(cli_env, "schedules", "apply", "--file", str(waiting))
    assert code == 2 and "approval_timeout_seconds (604800) must be shorter than execution_timeout (1h)" in err
    ids = [s.id async for s in await temporal_env.client.list_schedules()]
    assert f"billing-{name}-u" not in ids and f"billing-{name}-w" not in ids
