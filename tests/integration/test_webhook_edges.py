"""The receiver at its edges, over real HTTP (uvicorn with the production configuration, raw
sockets where an HTTP client would not misbehave enough) against a real Postgres:

- bodies refused while they stream (413), slow heads and bodies cut off (408 or close), the
  connection limit (503).
"""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
import httpx
import pytest

from billing.settings import Settings
from tests.integration.edge_helpers import (
    RawConnection,
    chunk,
    event_body,
    signed,
)
from tests.integration.webhook_helpers import receiver

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
