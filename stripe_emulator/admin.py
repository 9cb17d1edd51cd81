"""The ``/_emulator`` admin API (JSON, no auth, never rate limited) and its async client."""

from __future__ import annotations

import copy
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .errors import StripeError
from .resources.base import public
from .resources.checkout_sessions import complete_checkout_session
from .resources.invoices import fail_invoice_payment, finalize_due_invoices
from .resources.meter_events import seed_meter_events
from .resources.subscriptions import roll_subscriptions
from .state import RequestContext, Store, new_request_id

if TYPE_CHECKING:
    from .app import EmulatorApp

PREFIX = "/_emulator"
SNAPSHOT_PATH = f"{PREFIX}/snapshot"


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def _bad(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status_code=status)


def admin_routes(emu: EmulatorApp) -> list[Route]:
    store = emu.store

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "now": store.now()})

    async def reset(request: Request) -> Response:
        try:
            body = await _json_body(request)
        except ValueError as exc:
            return _bad(str(exc))
        await emu.deliverer.cancel_all()
        if body.get("reset_config"):
            store.config = copy.deepcopy(emu.initial_config)
        if body.get("config"):
            try:
                store.config.update(body["config"])
            except (ValueError, TypeError) as exc:
                return _bad(str(exc))
        store.reset_state()
        # A test clock that starts in the past (negative) or future: only at a reset, before any
        # object exists, so time still only moves forward for every object.
        try:
            store.clock.offset = float(body.get("clock_offset_seconds", 0))
        except (ValueError, TypeError) as exc:
            return _bad(str(exc))
        return JSONResponse({"ok": True, "now": store.now(), "config": store.config.to_dict()})

    async def config(request: Request) -> Response:
        if request.method == "POST":
            try:
                store.configure(await _json_body(request))
            except (ValueError, TypeError) as exc:
                return _bad(str(exc))
        return JSONResponse(store.config.to_dict())

    async def clock(request: Request) -> Response:
        return JSONResponse({"now": store.now()})

    async def advance(request: Request) -> Response:
        try:
            body = await _json_body(request)
            seconds = float(body.get("seconds", 0))
            store.clock.advance(seconds)
        except (ValueError, TypeError) as exc:
            return _bad(str(exc))
        roll_subscriptions(store)
        finalize_due_invoices(store)
        return JSONResponse({"now": store.now()})

    async def freeze(request: Request) -> Response:
        try:
            body = await _json_body(request)
        except ValueError as exc:
            return _bad(str(exc))
        now = store.clock.freeze(bool(body.get("frozen", True)))
        return JSONResponse({"now": now, "frozen": store.clock.frozen_at is not None})

    async def meter_events(request: Request) -> Response:
        q = request.query_params
        recs = store.meter_events.select(q.get("event_name") or None, q.get("customer") or None)
        data = [r.admin_dict() for r in recs]
        return JSONResponse({"data": data, "count": len(data)})

    async def meter_events_bulk(request: Request) -> Response:
        try:
            body = await _json_body(request)
            n = seed_meter_events(store, body.get("events") or [])
        except (ValueError, TypeError, KeyError) as exc:
            return _bad(str(exc))
        return JSONResponse({"inserted": n})

    async def stats(request: Request) -> Response:
        return JSONResponse(dict(store.stats))

    async def stats_reset(request: Request) -> Response:
        store.stats.clear()
        return JSONResponse({"ok": True})

    async def request_log(request: Request) -> Response:
        q = request.query_params
        try:
            since = float(q.get("since") or 0)
        except ValueError as exc:
            return _bad(str(exc))
        entries = store.request_log.select(since, q.get("route") or None)
        # [wall-clock unix seconds, route, HTTP status, "<id>/<customer>"], oldest first
        return JSONResponse({"data": [e.to_list() for e in entries], "count": len(entries)})

    async def request_log_reset(request: Request) -> Response:
        store.request_log.clear()
        return JSONResponse({"ok": True})

    def on_object(
        action: Callable[[Store, RequestContext, str], dict[str, Any]],
    ) -> Callable[[Request], Awaitable[Response]]:
        """A test-helper route: ``action`` on the object ``{id}``, answered with the object."""

        async def endpoint(request: Request) -> Response:
            ctx = RequestContext(request_id=new_request_id())
            try:
                obj = action(store, ctx, request.path_params["id"])
            except StripeError as err:
                return JSONResponse(err.body(), status_code=err.status)
            return JSONResponse(public(obj))

        return endpoint

    complete = on_object(complete_checkout_session)
    fail_payment = on_object(fail_invoice_payment)

    async def deliveries(request: Request) -> Response:
        return JSONResponse(
            {"data": list(emu.deliverer.log), "in_flight": len(emu.deliverer.tasks)}
        )

    async def snapshot(request: Request) -> Response:
        if emu.persister is None:
            return _bad("the emulator was started without --state-file: nothing to save to", 409)
        try:
            info = await emu.persister.save()
        except OSError as exc:
            return _bad(f"saving {emu.persister.path} failed: {exc}", 500)
        return JSONResponse(info)

    return [
        Route(f"{PREFIX}/health", health, methods=["GET"]),
        Route(SNAPSHOT_PATH, snapshot, methods=["POST"]),
        Route(f"{PREFIX}/reset", reset, methods=["POST"]),
        Route(f"{PREFIX}/config", config, methods=["GET", "POST"]),
        Route(f"{PREFIX}/clock", clock, methods=["GET"]),
        Route(f"{PREFIX}/clock/advance", advance, methods=["POST"]),
        Route(f"{PREFIX}/clock/freeze", freeze, methods=["POST"]),
        Route(f"{PREFIX}/meter_events", meter_events, methods=["GET"]),
        Route(f"{PREFIX}/meter_events/bulk", meter_events_bulk, methods=["POST"]),
        Route(f"{PREFIX}/requests/stats", stats, methods=["GET"]),
        Route(f"{PREFIX}/requests/stats/reset", stats_reset, methods=["POST"]),
        Route(f"{PREFIX}/requests/log", request_log, methods=["GET"]),
        Route(f"{PREFIX}/requests/log/reset", request_log_reset, methods=["POST"]),
        Route(f"{PREFIX}/checkout_sessions/{{id}}/complete", complete, methods=["POST"]),
        Route(f"{PREFIX}/webhook_deliveries", deliveries, methods=["GET"]),
        Route(f"{PREFIX}/invoices/{{id}}/fail_payment", fail_payment, methods=["POST"]),
    ]


class EmulatorAdminError(RuntimeError):
    pass


class EmulatorAdmin:
    """Async client for the admin API: ``async with EmulatorAdmin("http://127.0.0.1:12111") as a:``."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def __aenter__(self) -> EmulatorAdmin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        resp = await self._client.request(method, f"{PREFIX}{path}", **kw)
        if resp.status_code >= 400:
            raise EmulatorAdminError(f"{method} {PREFIX}{path} -> {resp.status_code}: {resp.text}")
        return resp.json()

    async def health(self) -> dict[str, Any]:
        return await self._call("GET", "/health")

    async def reset(
        self, *, reset_config: bool = False, config: dict[str, Any] | None = None,
        clock_offset_seconds: float = 0,
    ) -> None:
        body: dict[str, Any] = {"reset_config": reset_config}
        if config:
            body["config"] = config
        if clock_offset_seconds:
            body["clock_offset_seconds"] = clock_offset_seconds
        await self._call("POST", "/reset", json=body)

    async def configure(self, **fields: Any) -> dict[str, Any]:
        return await self._call("POST", "/config", json=fields)

    async def get_config(self) -> dict[str, Any]:
        return await self._call("GET", "/config")

    async def now(self) -> int:
        return int((await self._call("GET", "/clock"))["now"])

    async def advance_clock(self, seconds: float) -> int:
        return int((await self._call("POST", "/clock/advance", json={"seconds": seconds}))["now"])

    async def freeze_clock(self, frozen: bool = True) -> int:
        """Stop the emulator clock (whole second) so time-boundary checks are exact."""
        return int((await self._call("POST", "/clock/freeze", json={"frozen": frozen}))["now"])

    async def meter_events(
        self, event_name: str | None = None, customer: str | None = None
    ) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("event_name", event_name), ("customer", customer)) if v}
        return (await self._call("GET", "/meter_events", params=params))["data"]

    async def seed_meter_events(self, events: list[dict[str, Any]]) -> int:
        return int(
            (await self._call("POST", "/meter_events/bulk", json={"events": events}))["inserted"]
        )

    async def request_stats(self) -> dict[str, int]:
        return await self._call("GET", "/requests/stats")

    async def reset_request_stats(self) -> None:
        await self._call("POST", "/requests/stats/reset")

    async def request_log(self, since: float = 0.0, route: str | None = None) -> list[list[Any]]:
        """[unix seconds, route, status, "<id>/<customer>"] per API request, oldest first."""
        params: dict[str, Any] = {"since": since}
        if route:
            params["route"] = route
        return (await self._call("GET", "/requests/log", params=params))["data"]

    async def reset_request_log(self) -> None:
        await self._call("POST", "/requests/log/reset")

    async def complete_checkout_session(self, id: str) -> dict[str, Any]:
        return await self._call("POST", f"/checkout_sessions/{id}/complete")

    async def fail_invoice_payment(self, id: str) -> dict[str, Any]:
        return await self._call("POST", f"/invoices/{id}/fail_payment")

    async def webhook_deliveries(self) -> dict[str, Any]:
        return await self._call("GET", "/webhook_deliveries")

    async def snapshot(self) -> dict[str, Any]:
        """Save the state file now (emulator started with ``--state-file``):
        ``{"path", "bytes", "seconds", "encode_seconds", "meter_events", "at"}``."""
        return await self._call("POST", "/snapshot")
