"""The receiver at its edges, over real HTTP (uvicorn with the production configuration, raw
sockets where an HTTP client would not misbehave enough) against a real Postgres:

- bodies refused while they stream (413), slow heads and bodies cut off (408 or close), the
  connection limit (503);
- validly signed events the inbox can never store: 400 and no row; Postgres down: 503, then
  stored once it is back;
- signatures dated in the future refused;
- /health/ready checks Postgres and Temporal for real, each time.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import asyncpg
import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from billing import db
from billing.settings import Settings
from common.client import data_converter
from devstack.components import find_temporal_binary
from tests.integration.edge_helpers import (
    RawConnection,
    chunk,
    connections_refused,
    event_body,
    private_database,
    signed,
)
from tests.integration.webhook_helpers import receiver
from webhooks.activities import store_event_args, store_event_sql
from webhooks.events import is_permanent_store_error, is_transient_store_error

pytestmark = pytest.mark.integration

# The receiver never calls Stripe; a loopback base keeps the local-stack secrets acceptable.
LOCAL_STRIPE = "http://127.0.0.1:9"
ANSWER_WITHIN = 15.0  # seconds: a failure bound, not a measurement


def edge_settings(dsn: str, secret: str, **extra: object) -> Settings:
    return Settings.model_validate({"DATABASE_URL": dsn, "STRIPE_API_BASE": LOCAL_STRIPE,
                                    "STRIPE_WEBHOOK_SECRET": secret, **extra})


async def inbox_count(pool: asyncpg.Pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM billing.stripe_events")


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


# ------------------------------------------------------------------------- size and time


async def test_oversized_bodies_are_refused_while_they_stream(postgres_dsn, webhook_secret, clean_db):
    settings = edge_settings(postgres_dsn, webhook_secret)
    limit = settings.webhook_max_body_bytes
    signature = signed("{}", webhook_secret)
    async with receiver(settings, None) as url:
        # A declared 200 MB: refused on the head, before one byte of the body is read.
        c = await RawConnection.open(url)
        await c.head(content_length=200_000_000, headers=signature)
        r = await c.response(ANSWER_WITHIN)
        assert r.status == 413 and r.closed
        assert error_of(r.body) == f"Content-Length 200000000 exceeds {limit} bytes"
        await c.close()

        # No Content-Length (chunked) and a body that never ends: refused once past the limit,
        # having read at most one more buffer (uvicorn pauses reading at 64 KiB).
        c = await RawConnection.open(url)
        await c.head(chunked=True, headers=signature)
        piece = b"x" * 16384
        sent = 0
        while sent <= limit:
            assert await c.send(chunk(piece)), f"connection closed after {sent} bytes"
            sent += len(piece)
        r = await c.response(ANSWER_WITHIN)
        assert r.status == 413 and r.closed
        error = error_of(r.body)
        assert error.startswith(f"body exceeds {limit} bytes (refused after ")
        read = int(error.split("refused after ")[1].split()[0])
        assert limit < read <= limit + 2 * 65536
        await c.close()

        # A Content-Length smaller than what follows: only the declared bytes are this request's
        # body (h11 framing), the signature (over everything) fails; the rest is not a request.
        body = event_body().encode() + b" " * (2 * limit)
        c = await RawConnection.open(url)
        await c.head(content_length=100, headers=signed(body.decode(), webhook_secret))
        await c.send(body[:100])
        r = await c.response(ANSWER_WITHIN)
        assert r.status == 400 and error_of(r.body).startswith("signature verification failed")
        await c.send(body[100:200_000])
        assert await c.closed_by_server(ANSWER_WITHIN)
        await c.close()
    assert await inbox_count(clean_db) == 0


async def test_slow_heads_and_bodies_are_cut_off(postgres_dsn, webhook_secret, clean_db):
    settings = edge_settings(postgres_dsn, webhook_secret, WEBHOOK_READ_TIMEOUT_SECONDS=1,
                             WEBHOOK_KEEP_ALIVE_SECONDS=1)
    body = event_body()
    async with receiver(settings, None) as url:
        # A body trickling in, one byte at a time: the deadline is for the whole body, so
        # trickling does not extend it. 408, and the connection is closed.
        c = await RawConnection.open(url)
        await c.head(content_length=len(body), headers=signed(body, webhook_secret))
        trickle = asyncio.create_task(_trickle(c, body.encode(), every=0.2))
        r = await c.response(ANSWER_WITHIN)
        trickle.cancel()
        assert r.status == 408 and r.closed
        assert error_of(r.body).startswith("body not received within 1 s")
        await c.close()

        # A request head that never completes: closed without an answer.
        c = await RawConnection.open(url)
        await c.send(b"POST /webhooks/stripe HTTP/1.1\r\nHost: receiver\r\n")
        assert await c.closed_by_server(ANSWER_WITHIN)
        await c.close()

        # A connection that sends nothing at all: closed.
        c = await RawConnection.open(url)
        assert await c.closed_by_server(ANSWER_WITHIN)
        await c.close()

        # After an answer, an idle keep-alive connection is closed (WEBHOOK_KEEP_ALIVE_SECONDS).
        c = await RawConnection.open(url)
        await c.send(b"GET /health/ready HTTP/1.1\r\nHost: receiver\r\n\r\n")
        r = await c.response(ANSWER_WITHIN)
        assert r.status == 200 and not r.closed
        assert await c.closed_by_server(ANSWER_WITHIN)
        await c.close()
    assert await inbox_count(clean_db) == 0


async def _trickle(c: RawConnection, data: bytes, *, every: float) -> None:
    for i in range(len(data)):
        if not await c.send(data[i:i + 1]):
            return
        await asyncio.sleep(every)


async def test_connections_beyond_the_limit_get_503(postgres_dsn, webhook_secret, clean_db):
    settings = edge_settings(postgres_dsn, webhook_secret, WEBHOOK_MAX_CONNECTIONS=3,
                             WEBHOOK_READ_TIMEOUT_SECONDS=60)
    async with receiver(settings, None) as url, httpx.AsyncClient() as http:
        assert (await http.get(url + "/health/ready")).status_code == 200
        idle = [await RawConnection.open(url) for _ in range(3)]
        # uvicorn counts the open connections, idle ones included: a new request is refused
        # before it reaches the app.
        async with httpx.AsyncClient() as other:
            r = await other.get(url + "/health/ready")
        assert r.status_code == 503 and r.text == "Service Unavailable"
        assert r.headers["connection"] == "close"
        for c in idle:
            await c.close()
        deadline = time.monotonic() + ANSWER_WITHIN
        while True:  # the server sees the closes asynchronously
            async with httpx.AsyncClient() as other:
                r = await other.get(url + "/health/ready")
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert r.status_code == 200


# ------------------------------------------------------------------- permanent vs transient


def _nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def _ev(**fields: object) -> str:
    return event_body(**fields)


def _with_object(**fields: object) -> str:
    return event_body(data={"object": {"id": "cus_edges", "object": "customer", **fields}})


# (signed body, what the 400's message says). Each is one a Stripe account could sign only by
# mistake, and none can ever be stored: retrying is pointless, so 4xx and no row.
UNSTORABLE = {
    "NUL in a value": (_with_object(name="a\x00b"), "a NUL character at data.object.name"),
    "NUL in a key": (_with_object(**{"na\x00me": 1}), "a NUL character at data.object.na\\x00me"),
    "unpaired surrogate": (_with_object(name="\ud800"), "an unpaired UTF-16 surrogate at data.object.name"),
    "created beyond year 9999": (_ev(created=10**15), "created 1000000000000000 is out of range"),
    "created negative": (_ev(created=-1), "created -1 is out of range"),
    "created true": (_ev(created=True), "invalid created True"),
    "created 1.5": (_ev(created=1.5), "invalid created 1.5"),
    "created a string": (_ev(created="1700000000"), "invalid created '1700000000'"),
    "3 kB event id": (_ev(id="evt_" + "a" * 3000), "invalid id 'evt_aaaa"),
    "id with spaces": (_ev(id="evt_ x"), "invalid id 'evt_ x'"),
    "3 kB type": (_ev(type="customer." + "x" * 3000), "invalid type"),
    "3 kB object id": (_with_object(id="cus_" + "x" * 3000), "invalid data.object.id"),
    "numeric object id": (_with_object(id=42), "invalid data.object.id 42"),
    "NaN": (_ev(created=0).replace('"livemode": false', '"livemode": NaN'), "NaN is not JSON"),
    "1e999": (_ev().replace('"livemode": false', '"livemode": 1e999'), "number out of range at livemode"),
    "5000-digit integer": (_ev().replace('"livemode": false', '"livemode": ' + "9" * 5000), "invalid JSON"),
    "nested 100 deep": (_with_object(metadata=_nested(100)), "JSON nested 103 levels deep (at most 64)"),
    "nested 100000 deep": ("[" * 100_000 + "]" * 100_000, "JSON nested 100000 levels deep"),
}


async def test_unstorable_events_are_400_and_leave_no_row(temporal_env, postgres_dsn, webhook_secret,
                                                          task_queue, clean_db):
    settings = edge_settings(postgres_dsn, webhook_secret, BILLING_TASK_QUEUE=task_queue)
    async with receiver(settings, temporal_env.client) as url, httpx.AsyncClient() as http:
        for name, (body, message) in UNSTORABLE.items():
            r = await http.post(url + "/webhooks/stripe", content=body, headers=signed(body, webhook_secret))
            assert r.status_code == 400, (name, r.text)
            assert message in r.json()["error"], (name, r.json()["error"])
        assert await inbox_count(clean_db) == 0
        # The receiver is fine afterwards: a good event is stored.
        good = event_body()
        r = await http.post(url + "/webhooks/stripe", content=good, headers=signed(good, webhook_secret))
        assert r.status_code == 200 and r.json()["status"] == "stored", r.text
    assert await inbox_count(clean_db) == 1


async def test_database_refusals_are_permanent_and_outages_transient(postgres_dsn, clean_db):
    """The backstop behind `parse_event`, with Postgres's real errors: what the inbox itself
    refuses is permanent; a database refusing connections is transient."""
    good: dict = json.loads(event_body())

    async def store(event: dict) -> Exception:
        with pytest.raises(Exception) as caught:
            async with clean_db.acquire() as conn:
                await conn.fetchrow(store_event_sql(), *store_event_args(event, "webhook"))
        return caught.value

    refused = {
        "NUL in jsonb": {**good, "data": {"object": {"id": "cus_1", "name": "a\x00b"}}},
        "created out of range": {**good, "created": 10**15},
        # Random CJK: incompressible, so no TOAST compression brings it under the index row limit.
        "9 kB id (index row too large)": {**good, "id": "evt_" + "".join(
            chr(0x4E00 + b % 0x5000) for b in os.urandom(3000))},
        "numeric object id": {**good, "data": {"object": {"id": 42}}},
    }
    for name, event in refused.items():
        e = await store(event)
        assert is_permanent_store_error(e), (name, type(e), e)
    assert await inbox_count(clean_db) == 0

    async with private_database(postgres_dsn) as dsn:
        await db.migrate(dsn)
        pool = await db.create_pool(dsn, min_size=1, max_size=1)
        try:
            async with connections_refused(postgres_dsn, dsn):
                with pytest.raises(Exception) as caught:
                    async with pool.acquire() as conn:
                        await conn.fetchrow(store_event_sql(), *store_event_args(good, "webhook"))
        finally:
            pool.terminate()
    assert is_transient_store_error(caught.value) and not is_permanent_store_error(caught.value), caught.value


async def test_postgres_down_is_503_then_the_retry_is_stored(temporal_env, postgres_dsn, webhook_secret,
                                                             task_queue):
    body = event_body()
    event_id = json.loads(body)["id"]
    async with private_database(postgres_dsn) as dsn:
        await db.migrate(dsn)
        settings = edge_settings(dsn, webhook_secret, BILLING_TASK_QUEUE=task_queue)
        async with receiver(settings, temporal_env.client) as url, httpx.AsyncClient() as http:
            async with connections_refused(postgres_dsn, dsn):
                r = await http.post(url + "/webhooks/stripe", content=body, headers=signed(body, webhook_secret))
                assert r.status_code == 503 and r.json() == {"error": "event store unavailable"}
                ready = await http.get(url + "/health/ready")
                assert ready.status_code == 503
                assert ready.json()["ready"] is False and ready.json()["postgres"].startswith("unavailable: ")
            # Stripe's retry, once Postgres is back.
            r = await http.post(url + "/webhooks/stripe", content=body, headers=signed(body, webhook_secret))
            assert r.status_code == 200 and r.json()["status"] == "stored", r.text
            assert (await http.get(url + "/health/ready")).json()["postgres"] == "ok"
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM billing.stripe_events WHERE event_id = $1",
                                       event_id) == 1
        finally:
            await conn.close()


# ------------------------------------------------------------------------- signatures


async def test_future_dated_signatures_are_refused(temporal_env, postgres_dsn, webhook_secret, task_queue,
                                                   clean_db):
    settings = edge_settings(postgres_dsn, webhook_secret, BILLING_TASK_QUEUE=task_queue)
    tolerance = settings.webhook_tolerance_seconds
    far, near = event_body(), event_body()
    async with receiver(settings, temporal_env.client) as url, httpx.AsyncClient() as http:
        now = int(time.time())
        r = await http.post(url + "/webhooks/stripe", content=far,
                            headers=signed(far, webhook_secret, at=now + tolerance + 60))
        assert r.status_code == 400
        assert r.json()["error"].startswith("signature timestamp is ") and \
            f"s in the future (tolerance {tolerance} s)" in r.json()["error"]
        # Within the tolerance (clock skew): accepted.
        r = await http.post(url + "/webhooks/stripe", content=near, headers=signed(near, webhook_secret, at=now + 30))
        assert r.status_code == 200, r.text
    assert await clean_db.fetchval("SELECT array_agg(event_id) FROM billing.stripe_events") == [json.loads(near)["id"]]


# ------------------------------------------------------------------------- readiness


async def test_ready_checks_temporal_every_time(postgres_dsn, webhook_secret, clean_db):
    """Once connected, the receiver used to say Temporal was ok forever. A private dev server,
    stopped while the receiver runs."""
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=find_temporal_binary(),
                                                data_converter=data_converter, ui=False,
                                                dev_server_log_level="warn")
    stopped = False
    try:
        settings = edge_settings(postgres_dsn, webhook_secret, WEBHOOK_HEALTH_TIMEOUT_SECONDS=2)
        async with receiver(settings, env.client) as url, httpx.AsyncClient() as http:
            r = await http.get(url + "/health/ready")
            assert (r.status_code, r.json()) == (200, {"ready": True, "postgres": "ok", "temporal": "ok"})
            await env.shutdown()
            stopped = True
            r = await http.get(url + "/health/ready")
            # Intake still works without Temporal (the replay sweeps), so still ready; but said.
            assert r.status_code == 200 and r.json()["postgres"] == "ok"
            assert r.json()["temporal"].startswith("unreachable: "), r.json()
    finally:
        if not stopped:
            await env.shutdown()
