"""The dead-man's switch on the real stack (health/deadman.py): a scheduled reconciliation that
succeeds pings DEADMAN_PING_URL once; one that fails does not (or pings `/fail` when
DEADMAN_PING_ON_FAILURE is on); a sink answering 500 is retried a bounded number of times and
the run completes either way; a run started by hand never pings."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from temporalio.client import Client, WorkflowFailureError

from billing.schedules import ScheduleDef
from common import ui
from common.options import PING_MAXIMUM_ATTEMPTS
from tests.integration.recon_helpers import make_settings, running_worker, seed_world


class Sink:
    """A tiny HTTP server recording every request; answers `fail_first` 500s first."""

    def __init__(self, fail_first: int = 0) -> None:
        self.requests: list[tuple[str, str, str]] = []  # (method, path, body)
        self.fail_first = fail_first
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                sink.requests.append(("POST", self.path, body))
                failing = sink.fail_first > 0
                sink.fail_first -= failing
                self.send_response(500 if failing else 200)
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@contextmanager
def sink_server(fail_first: int = 0) -> Iterator[Sink]:
    sink = Sink(fail_first)
    thread = threading.Thread(target=sink.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.server.shutdown()
        sink.server.server_close()


async def run_scheduled(client: Client, task_queue: str, name: str, customers: list[str],
                        *, workflow: str = "ReconcileUsage", inp: dict | None = None) -> tuple[str, bool]:
    """Create a schedule of a usage sync over `customers` (or of `workflow` with `inp`), trigger
    it once and wait for the run: (workflow id, succeeded). The schedule is deleted afterwards."""
    d = ScheduleDef(name=name, workflow=workflow, note="dead-man test", every="1d", execution_timeout="10m",
                    input=inp or {"mode": "apply", "lookback_days": 1, "customers": customers, "settle_seconds": 1,
                                  "actor": f"schedule:{name}", "approval_timeout_seconds": 60})
    handle = await client.create_schedule(d.schedule_id, d.to_schedule(task_queue))
    try:
        await handle.trigger()
        for _ in range(100):
            actions = (await handle.describe()).info.recent_actions
            if actions:
                break
            await asyncio.sleep(0.1)
        workflow_id = actions[0].action.workflow_id
        try:
            await asyncio.wait_for(client.get_workflow_handle(workflow_id).result(), 60)
            return workflow_id, True
        except WorkflowFailureError:
            return workflow_id, False
    finally:
        await handle.delete()


async def test_the_ping_arrives_after_a_scheduled_success_and_not_after_a_failure(
        temporal_env, postgres_dsn, emulator, task_queue, clean_db, stripe_client):
    world = await seed_world(clean_db, stripe_client, n_customers=1, days=1, with_counters=False)
    tag = uuid.uuid4().hex[:6]
    ok_name, failing_name = f"usage-sync-{tag}", f"failing-sync-{tag}"
    with sink_server(fail_first=2) as sink:
        settings = make_settings(postgres_dsn, emulator, DEADMAN_PING_URL=f"{sink.url}/ping/{{schedule}}?rid=1",
                                 DEADMAN_PING_SCHEDULES=f"{ok_name},{failing_name}")
        async with running_worker(temporal_env.client, settings, task_queue):
            ok_id, ok = await run_scheduled(temporal_env.client, task_queue, ok_name, world.customer_ids)
            assert ok
            # Two 500s were retried: the run completed, and exactly one ping succeeded.
            assert sink.requests == [("POST", f"/ping/{ok_name}?rid=1", f"{ok_id} ok")] * 3
            desc = await temporal_env.client.get_workflow_handle(ok_id).describe()
            sa = desc.typed_search_attributes
            # A scheduled run carries the schedule's search attributes, summary and details too.
            assert (sa.get(ui.SCHEDULED_BY), sa.get(ui.RUN_KIND), sa.get(ui.OUTCOME)) == \
                   (f"billing-{ok_name}", "reconcile-usage", "drift_fixed")
            assert f"Started by schedule `billing-{ok_name}`" in (await desc.static_details() or "")

            sink.requests.clear()
            # An unknown customer fails the run (UnknownCustomer) before it reconciles anything.
            failed_id, ok = await run_scheduled(temporal_env.client, task_queue, failing_name, ["nobody"])
            assert not ok
            # The ping activity would run before the workflow fails: none was sent.
            assert sink.requests == []

            # A run started by hand, not by a schedule, never pings.
            await temporal_env.client.execute_workflow(
                "ReconcileUsage", world.request(mode="apply"), id=f"by-hand-{tag}", task_queue=task_queue)
            assert sink.requests == []

        # With DEADMAN_PING_ON_FAILURE, a failed scheduled run pings `<url>/fail`.
        settings = make_settings(postgres_dsn, emulator, DEADMAN_PING_URL=f"{sink.url}/ping/{{schedule}}",
                                 DEADMAN_PING_SCHEDULES=failing_name, DEADMAN_PING_ON_FAILURE="true")
        async with running_worker(temporal_env.client, settings, task_queue):
            failed_id, ok = await run_scheduled(temporal_env.client, task_queue, failing_name, ["nobody"])
            assert not ok
            assert sink.requests == [("POST", f"/ping/{failing_name}/fail", f"{failed_id} failed")]


async def test_the_usage_sync_tick_pings_after_a_scheduled_run(
        temporal_env, postgres_dsn, emulator, task_queue, clean_db, stripe_client):
    """The `usage-sync` schedule starts UsageTick: its successful runs ping like ReconcileUsage's."""
    await seed_world(clean_db, stripe_client, n_customers=1, days=1, with_counters=False)
    name = f"usage-sync-{uuid.uuid4().hex[:6]}"
    with sink_server(fail_first=0) as sink:
        settings = make_settings(postgres_dsn, emulator, DEADMAN_PING_URL=f"{sink.url}/ping/{{schedule}}",
                                 DEADMAN_PING_SCHEDULES=name)
        async with running_worker(temporal_env.client, settings, task_queue):
            tick_id, ok = await run_scheduled(temporal_env.client, task_queue, name, [], workflow="UsageTick",
                                              inp={"mode": "apply", "actor": f"schedule:{name}", "settle_seconds": 1})
            assert ok
            assert sink.requests == [("POST", f"/ping/{name}", f"{tick_id} ok")]


async def test_a_sink_that_keeps_failing_is_retried_a_bounded_number_of_times_and_never_fails_the_run(
        temporal_env, postgres_dsn, emulator, task_queue, clean_db, stripe_client):
    world = await seed_world(clean_db, stripe_client, n_customers=1, days=1, with_counters=False)
    name = f"usage-sync-{uuid.uuid4().hex[:6]}"
    with sink_server(fail_first=PING_MAXIMUM_ATTEMPTS + 1) as sink:
        settings = make_settings(postgres_dsn, emulator, DEADMAN_PING_URL=f"{sink.url}/ping",
                                 DEADMAN_PING_SCHEDULES=name)
        async with running_worker(temporal_env.client, settings, task_queue):
            _, ok = await run_scheduled(temporal_env.client, task_queue, name, world.customer_ids)
        assert ok  # the run completed without its ping
        assert len(sink.requests) == PING_MAXIMUM_ATTEMPTS
