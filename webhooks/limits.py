"""What the webhook receiver refuses before it looks at an event, and the server it runs on.

The receiver is on the internet and unauthenticated until the signature is checked, so every
resource a request can hold is bounded:

- **Body size, while streaming** (`read_body`): a declared Content-Length over the limit is
  refused before reading anything, and a body without one (chunked) or with a wrong one is
  counted as it arrives and refused as soon as it passes the limit. At most the limit plus one
  of uvicorn's read buffers (64 KiB) is held per request. 413, and the connection is closed so
  the rest of the body is never read.
- **Body deadline** (`read_body`): the whole body must arrive within the read timeout; else 408
  and the connection is closed.
- **Request head deadline** (`HeadDeadlineH11Protocol`): uvicorn closes idle keep-alive
  connections (`timeout_keep_alive`) but waits forever for a request line and headers that
  never complete. This subclass of its h11 protocol closes a connection whose request head has
  not fully arrived within the read timeout, from the moment it waits for one (connection made,
  or previous response sent).
- **Connections and concurrency** (`uvicorn_config`): uvicorn's `limit_concurrency` counts open
  connections and running requests; beyond it new requests get 503 and the connection is closed.
  uvicorn's own knob rather than a middleware: it refuses before the app (and its Postgres pool)
  is involved, and it also counts connections that have not sent a request yet.
- **Header size**: h11's limit on an incomplete request head (`h11_max_incomplete_event_size`),
  uvicorn answers 400 beyond it.

Why inside the receiver rather than only in a reverse proxy: the receiver is also run without
one (`dev up`, docker-compose), and these limits are cheap. A proxy in front may be stricter.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import uvicorn
from starlette.requests import ClientDisconnect, Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from billing.settings import Settings

log = logging.getLogger("billing.webhooks")

# h11's default, made explicit: request line and headers together.
MAX_HEADER_BYTES = 16 * 1024
# Stripe events nest about 8 levels deep; past this a body is refused (400) before it is parsed:
# Python's parser would hit its recursion limit, and Postgres its stack depth limit.
MAX_JSON_DEPTH = 64


class BodyRefused(Exception):
    """The body was not read to the end; `status` is the answer. The connection must close."""

    status = 400


class BodyTooLarge(BodyRefused):
    status = 413


class BodyTimeout(BodyRefused):
    status = 408


async def read_body(request: Request, max_bytes: int, within_seconds: float) -> bytes:
    """The request body, read chunk by chunk: refused as soon as it passes `max_bytes` or when
    it has not fully arrived within `within_seconds`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(f"Content-Length {declared} exceeds {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(within_seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise BodyTooLarge(f"body exceeds {max_bytes} bytes (refused after {size} bytes)")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout(f"body not received within {within_seconds:g} s ({size} bytes arrived)") from None
    except ClientDisconnect:
        raise BodyRefused(f"client disconnected after {size} bytes of the body") from None
    return b"".join(chunks)


# Strings (escapes included) and then brackets: the nesting depth of a JSON text, without
# parsing it. The string pattern is the "unrolled loop" form: linear, no backtracking blow-up.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in `text` (valid JSON or not)."""
    depth = deepest = 0
    for m in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


class HeadDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for each request head (see the module doc).
    `uvicorn_config` makes a subclass with the deadline set."""

    head_timeout: float = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request head arrived: its body has its own deadline
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        self._arm_head_timer()  # the next request on this connection (a pipelined one cancels it)
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            log.info("connection from %s closed: no complete request head within %g s",
                     self.client, self.head_timeout)
            self.transport.close()


def protocol_with_head_deadline(seconds: float) -> type[HeadDeadlineH11Protocol]:
    return type("HeadDeadlineH11Protocol", (HeadDeadlineH11Protocol,), {"head_timeout": seconds})


def uvicorn_config(app: Any, settings: Settings, *, host: str | None = None, port: int | None = None,
                   **overrides: Any) -> uvicorn.Config:
    """The receiver's uvicorn configuration, the same in production and in the tests."""
    options: dict[str, Any] = {
        "http": protocol_with_head_deadline(settings.webhook_read_timeout_seconds),
        "ws": "none",
        "limit_concurrency": settings.webhook_max_connections,
        "timeout_keep_alive": settings.webhook_keep_alive_seconds,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        **overrides,
    }
    return uvicorn.Config(app, host=host or settings.webhook_host, port=port or settings.webhook_port, **options)
