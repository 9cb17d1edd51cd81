"""Helpers of the "trust at the edges" tests: a private database on the session's Postgres (for
tests that break it or start from an old schema), raw HTTP against the receiver (for bodies and
heads that no HTTP client library sends), and signed event bodies."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from devstack.postgres import ensure_database
from stripe_emulator.webhooks import sign
from webhooks.app import PATH


def with_database(dsn: str, database: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))


@asynccontextmanager
async def private_database(postgres_dsn: str, *, prefix: str = "edges") -> AsyncIterator[str]:
    """DSN of a new, empty database on the session's server, dropped afterwards."""
    name = f"billing_{prefix}_{uuid.uuid4().hex[:8]}"
    await ensure_database(postgres_dsn, name)
    try:
        yield with_database(postgres_dsn, name)
    finally:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@asynccontextmanager
async def connections_refused(postgres_dsn: str, dsn: str) -> AsyncIterator[None]:
    """While inside: the database of `dsn` refuses new connections and its open ones are
    terminated (Postgres as seen by a client while it is down), then it accepts them again."""
    database = urllib.parse.urlsplit(dsn).path.lstrip("/")
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database)
        try:
            yield
        finally:
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    finally:
        await admin.close()


def signed(body: str, secret: str, *, at: int | None = None) -> dict[str, str]:
    return {"Content-Type": "application/json", "Stripe-Signature": sign(body, secret, at or int(time.time()))}


def event_body(**fields: Any) -> str:
    """A well-formed event's JSON (fields override), as Stripe would send it."""
    event: dict[str, Any] = {
        "id": f"evt_{uuid.uuid4().hex[:24]}", "object": "event", "type": "customer.updated",
        "created": int(time.time()), "api_version": "2026-10-28.endive", "livemode": False,
        "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None},
        "data": {"object": {"id": "cus_edges", "object": "customer", "name": "Edge"}},
    }
    event.update(fields)
    return json.dumps(event)


@dataclass
class RawResponse:
    status: int | None  # None: the connection closed without an answer
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after answering (or without answering)


class RawConnection:
    """One TCP connection to the receiver, written to byte by byte as the test decides."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, base_url: str) -> RawConnection:
        parts = urllib.parse.urlsplit(base_url)
        assert parts.hostname and parts.port
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> bool:
        """False when the server has closed the connection (nothing more can be sent)."""
        try:
            self.writer.write(data)
            await self.writer.drain()
            return True
        except (ConnectionError, OSError):
            return False

    async def head(self, *, content_length: int | None = None, chunked: bool = False,
                   headers: dict[str, str] | None = None, path: str = PATH) -> None:
        lines = [f"POST {path} HTTP/1.1", "Host: receiver", "Content-Type: application/json"]
        if content_length is not None:
            lines.append(f"Content-Length: {content_length}")
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def response(self, within: float) -> RawResponse:
        """The next response (or the connection closing), waiting at most `within` seconds."""
        async with asyncio.timeout(within):
            try:
                status_line = await self.reader.readline()
            except ConnectionError:
                status_line = b""
            if not status_line:
                return RawResponse(None, {}, b"", closed=True)
            headers: dict[str, str] = {}
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
            closed = headers.get("connection", "").lower() == "close"
            if closed:
                closed = await self.reader.read() == b""  # and the server really closes it
            return RawResponse(int(status_line.split()[1]), headers, body, closed)

    async def closed_by_server(self, within: float) -> bool:
        """True when the server closes the connection (EOF) within `within` seconds."""
        try:
            async with asyncio.timeout(within):
                while await self.reader.read(65536):
                    pass
            return True
        except ConnectionError:
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"
