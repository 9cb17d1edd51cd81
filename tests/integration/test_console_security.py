"""The console refuses before anything happens: an unauthenticated request, a viewer trying to
approve, an operator's POST without (or with someone else's, or a cross-site) CSRF token. Each
refusal is checked to have written nothing: no audit row, the pause switch and the run as they
were, no workflow started. Against the real console process, Postgres and Temporal."""

from __future__ import annotations

import csv
import io
import json

import pytest
from temporalio.service import RPCError

from autoheal.types import AUTOHEAL_WORKFLOW_ID
from devstack.processes import free_port
from starter.queries import DISCREPANCY_COLUMNS
from tests.integration.cli_helpers import cli
from tests.integration.console_helpers import console_process, csrf_of, signed_in

pytestmark = pytest.mark.integration

PLAN_RUN = "console-security-plan"


@pytest.fixture
async def console(cli_env, tmp_path, clean_db, temporal_env):
    await clean_db.execute(
        "INSERT INTO billing.reconciliation_runs (run_id, workflow_run_id, mode, window_start, window_end, status) "
        "VALUES ($1, '3f0c2a56-1111-4222-8333-444455556666', 'plan', current_date, current_date, 'awaiting_approval')",
        PLAN_RUN)
    await clean_db.execute(
        "INSERT INTO billing.discrepancies (run_id, discrepancy_key, kind, customer_id, meter, ledger_value, status) "
        "VALUES ($1, 'console-security-key', 'under_reported', 'acme', 'api_requests', 5, 'observed')", PLAN_RUN)
    with console_process(cli_env, tmp_path / "console.log") as base:
        yield base, await autoheal_run(temporal_env.client)


async def autoheal_run(temporal_client) -> str | None:
    """The latest AutoHealControl execution's run id (None: never started on this server)."""
    try:
        return (await temporal_client.get_workflow_handle(AUTOHEAL_WORKFLOW_ID).describe()).run_id
    except RPCError:
        return None


async def nothing_written(pool, temporal_client, autoheal_before: str | None) -> None:
    assert await pool.fetchval("SELECT count(*) FROM billing.audit_log") == 0
    assert await pool.fetchval("SELECT count(*) FROM billing.autoheal_state WHERE paused") == 0
    run = await pool.fetchrow("SELECT status, approved_by, rejected_by FROM billing.reconciliation_runs "
                              "WHERE run_id = $1", PLAN_RUN)
    assert dict(run) == {"status": "awaiting_approval", "approved_by": None, "rejected_by": None}
    assert await autoheal_run(temporal_client) == autoheal_before  # no AutoHealControl started by a refusal


async def test_unauthenticated_requests_are_refused(console, clean_db, temporal_env):
    import httpx

    async with httpx.AsyncClient(base_url=console[0], follow_redirects=False) as anon:
        page = await anon.get("/")
        assert page.status_code == 303 and page.headers["location"] == "/login"
        for path in ("/runs", "/audit", "/customers", "/incidents", f"/runs/{PLAN_RUN}/discrepancies.csv"):
            r = await anon.get(path)
            assert r.status_code == 303, path
        login = await anon.get("/login")
        token = csrf_of(login.text)
        for path, data in (("/pause", {"reason": "x"}), (f"/runs/{PLAN_RUN}/approve", {}),
                           ("/customers", {"customer": "acme"}), ("/customers/repair", {"customer": "acme"})):
            r = await anon.post(path, data={"csrf_token": token, **data})
            assert r.status_code == 401, path
        # A wrong token does not sign in; a token in the URL is never read.
        r = await anon.post("/login", data={"csrf_token": token, "token": "not-a-token-0123456789"})
        assert r.status_code == 401 and "console_session" not in r.cookies
        r = await anon.get("/login?token=viewer-token-0123456789abcdef")
        assert "console_session" not in r.cookies
        assert (await anon.get("/")).status_code == 303
        # Every response carries the security headers.
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY" and page.headers["referrer-policy"] == "same-origin"
    await nothing_written(clean_db, temporal_env.client, console[1])


async def test_a_viewer_cannot_approve_pause_or_repair(console, clean_db, temporal_env):
    async with signed_in(console[0], "vera-viewer") as viewer:
        # A viewer reads and downloads.
        export = await viewer.get(f"/runs/{PLAN_RUN}/discrepancies.csv?kind=under_reported")
        assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(export.text)))
        assert export.text.splitlines()[0] == ",".join(DISCREPANCY_COLUMNS)
        assert [(r["discrepancy_key"], r["kind"], r["customer_id"], r["ledger_value"]) for r in rows] == [
            ("console-security-key", "under_reported", "acme", "5")]
        report = await viewer.get("/incidents/report.json?since=2026-11-01&until=2026-11-08")
        assert report.status_code == 200 and json.loads(report.text)["since"].startswith("2026-11-01")
        assert "attachment" in report.headers["content-disposition"]
        crafted = await viewer.get("/?done=call+0800+to+restore+your+account")
        assert crafted.status_code == 200 and "0800" not in crafted.text
        page = await viewer.get(f"/runs/{PLAN_RUN}")
        assert page.status_code == 200 and "needs the approver role" in page.text and 'id="approve"' not in page.text
        token = csrf_of(page.text)
        for path in (f"/runs/{PLAN_RUN}/approve", f"/runs/{PLAN_RUN}/reject", "/pause", "/resume", "/customers/repair"):
            r = await viewer.post(path, data={"csrf_token": token, "reason": "viewer tries", "customer": "acme"})
            assert r.status_code == 403, path
            assert "vera-viewer is a viewer" in r.text
    async with signed_in(console[0], "otto-operator") as operator:
        token = csrf_of((await operator.get("/")).text)
        r = await operator.post(f"/runs/{PLAN_RUN}/approve", data={"csrf_token": token, "reason": "not mine"})
        assert r.status_code == 403 and "needs the approver role" in r.text
    await nothing_written(clean_db, temporal_env.client, console[1])


async def test_posts_without_a_valid_csrf_token_are_refused(console, clean_db, temporal_env):
    async with signed_in(console[0], "ada-approver") as approver, signed_in(console[0], "otto-operator") as operator:
        own = csrf_of((await approver.get("/")).text)
        others = csrf_of((await operator.get("/")).text)
        cases = [
            ({"reason": "no token"}, {}),
            ({"reason": "empty", "csrf_token": ""}, {}),
            ({"reason": "forged", "csrf_token": "0" * 64}, {}),
            ({"reason": "someone else's", "csrf_token": others}, {}),
            ({"reason": "cross-site", "csrf_token": own}, {"Origin": "https://evil.example"}),
        ]
        for data, headers in cases:
            for path in ("/pause", f"/runs/{PLAN_RUN}/approve"):
                r = await approver.post(path, data=data, headers=headers)
                assert r.status_code == 403, (path, data["reason"])
                assert "CSRF" in r.text or "cross-origin" in r.text
        # Without its cookie (another browser), the page's token is useless too.
        approver.cookies.delete("console_csrf")
        r = await approver.post("/pause", data={"reason": "cookie gone", "csrf_token": own})
        assert r.status_code == 403
    await nothing_written(clean_db, temporal_env.client, console[1])


async def test_the_console_refuses_to_start_open_or_misconfigured(cli_env):
    env = {k: v for k, v in cli_env.items() if not k.startswith("CONSOLE_")}
    code, out, err = await cli(env, "console")
    assert code == 2 and err.strip() == ("error: CONSOLE_TOKENS is empty: nobody could sign in (set actor:role:token "
                                         "entries, or CONSOLE_AUTH=proxy)")
    code, out, err = await cli({**env, "CONSOLE_TOKENS": "alice:root:alice-secret-0123456789"}, "console")
    assert code == 1 and err.startswith("invalid settings: CONSOLE_TOKENS") and "alice-secret" not in err
    assert "Traceback" not in err


async def test_temporal_unreachable_is_one_line_and_writes_nothing(cli_env, tmp_path, clean_db, temporal_env):
    before = await autoheal_run(temporal_env.client)
    closed = f"127.0.0.1:{free_port()}"
    with console_process(cli_env, tmp_path / "console.log", TEMPORAL_ADDRESS=closed) as base:
        async with signed_in(base, "ada-approver") as approver:
            page = await approver.get("/")
            assert page.status_code == 200 and "Temporal unreachable" in page.text  # the rest still shows
            r = await approver.post("/pause", data={"csrf_token": csrf_of(page.text), "reason": "x"})
            assert r.status_code == 503 and "not available right now" in r.text and "Traceback" not in r.text
    assert await clean_db.fetchval("SELECT count(*) FROM billing.audit_log") == 0
    assert await autoheal_run(temporal_env.client) == before


async def test_a_viewer_reads_a_revenue_run_and_downloads_it(console, clean_db):
    ref = "7a1d3c9e-2222-4333-8444-555566667777"
    await clean_db.execute(
        "INSERT INTO billing.reconciliation_runs (run_id, workflow_run_id, kind, mode, window_start, window_end, "
        "status) VALUES ('revenue-week-48', $1, 'revenue', 'dry-run', '2026-11-20', '2026-11-26', 'completed')", ref)
    await clean_db.execute(
        "INSERT INTO billing.revenue_days VALUES ('revenue-week-48', '2026-11-21', 'usd', 3, 4500, 0, 4, 6000, 0, "
        "6000, 0, 6000, -1500, 1)")
    await clean_db.execute(
        "INSERT INTO billing.revenue_findings (run_id, stripe_invoice_id, kind, day, customer_id, currency, "
        "stripe_status, stripe_amount_paid, status) VALUES ('revenue-week-48', 'in_123', 'missing_locally', "
        "'2026-11-21', 'acme', 'usd', 'paid', 1500, 'observed')")
    async with signed_in(console[0], "vera-viewer") as viewer:
        listing = await viewer.get("/revenue")
        assert listing.status_code == 200 and f'href="/revenue/{ref}"' in listing.text
        page = await viewer.get(f"/revenue/{ref}")
        assert page.status_code == 200 and "in_123" in page.text and "-1500" in page.text
        days = list(csv.DictReader(io.StringIO((await viewer.get(f"/revenue/{ref}/days.csv")).text)))
        assert [(d["day"], d["drift"], d["findings"]) for d in days] == [("2026-11-21", "-1500", "1")]
        findings = list(csv.DictReader(io.StringIO((await viewer.get(f"/revenue/{ref}/findings.csv")).text)))
        assert [(f["stripe_invoice_id"], f["kind"], f["status"]) for f in findings] == [
            ("in_123", "missing_locally", "observed")]
        assert (await viewer.get(f"/revenue/{PLAN_RUN}")).status_code == 404  # a usage run is not a revenue run
