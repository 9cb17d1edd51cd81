"""The one audit writer (common/audit.py) and migration 0007 against a real Postgres."""

from __future__ import annotations

import pytest

from billing import correlation
from billing.db import migration_files
from common.audit import AuditAction, AuditInput, write_audit

pytestmark = pytest.mark.integration


def entry(**kw) -> AuditInput:
    return AuditInput(**{"actor": "alice", "action": AuditAction.CREDITS_ADJUST, "entity_type": "credit_balance",
                         "entity_id": "c1", "customer_id": "c1", "workflow_id": "wf-1", "run_id": "r-1",
                         "idempotency_key": "adjust:wf-1", "after": {"balance": 5}, **kw})


async def test_a_write_is_audited_once_by_its_key(clean_db):
    async with clean_db.acquire() as conn:
        assert await write_audit(conn, entry()) is True
        assert await write_audit(conn, entry(reason="retried")) is False
    rows = await clean_db.fetch("SELECT * FROM billing.audit_log")
    assert len(rows) == 1
    r = rows[0]
    assert (r["action"], r["customer_id"], r["after"], r["reason"]) == ("credits.adjust", "c1", {"balance": 5}, None)


async def test_the_correlation_id_is_the_commands_else_the_workflow_id(clean_db):
    async with clean_db.acquire() as conn:
        await write_audit(conn, entry(idempotency_key="no-command"))
        correlation.set_current("cmd-42")
        try:
            await write_audit(conn, entry(idempotency_key="from-command"))
        finally:
            correlation.set_current(None)
    got = {r["idempotency_key"]: r["correlation_id"] for r in await clean_db.fetch(
        "SELECT idempotency_key, correlation_id FROM billing.audit_log")}
    assert got == {"no-command": "wf-1", "from-command": "cmd-42"}


async def test_migration_0007_renames_the_old_actions(clean_db):
    old = [("pause_auto_healing", None), ("resume_auto_healing", None), ("approve_plan", None),
           ("reject_plan", None), ("set_usage_counter", None), ("cancel_meter_event", {"value": "2"}),
           ("push_meter_event:delta", {"value": "3"}), ("push_meter_event:compensation", None),
           ("credits.grant", {"balance": 1})]
    for i, (action, after) in enumerate(old):
        await clean_db.execute(
            "INSERT INTO billing.audit_log (actor, action, entity_type, entity_id, after, idempotency_key) "
            "VALUES ('x', $1, 't', 'e', $2::jsonb, $3)", action, after, f"k{i}")
    sql = dict(migration_files())["0007_audit_actions"]
    await clean_db.execute(sql)
    rows = [(r["action"], r["after"]) for r in await clean_db.fetch(
        "SELECT action, after FROM billing.audit_log ORDER BY id")]
    assert rows == [
        ("run.pause", None), ("run.resume", None), ("run.approve", None), ("run.reject", None),
        ("usage.set_counter", None), ("usage.cancel_meter_event", {"value": "2"}),
        ("usage.push_meter_event", {"value": "3", "kind": "delta"}),
        ("usage.push_meter_event", {"kind": "compensation"}), ("credits.grant", {"balance": 1})]
    assert {r for r, _ in rows} <= {a.value for a in AuditAction}
