"""The Starlette ASGI app: Stripe's v1 wire protocol plus the ``/_emulator`` admin API."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import functools
import json
import logging
import re
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .admin import SNAPSHOT_PATH, admin_routes
from .config import API_VERSION, Config
from .errors import StripeError, rate_limited
from .forms import FormError, parse_pairs
from .persist import DEFAULT_SAVE_INTERVAL_SECONDS, StatePersister
from .resources import ROUTES
from .resources.base import Handler, public
from .state import RequestContext, SavedResponse, Store, new_request_id
from .webhooks import WebhookDeliverer

log = logging.getLogger("stripe_emulator")


class Router:
    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], str, Handler]] = []

    def add(self, method: str, template: str, handler: Handler) -> None:
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
        self.routes.append((method, re.compile(f"^{pattern}$"), template, handler))

    def match(self, method: str, path: str) -> tuple[str, Handler, dict[str, str]] | None:
        for m, rx, template, handler in self.routes:
            if m == method:
                mt = rx.match(path)
                if mt:
                    return template, handler, mt.groupdict()
        return None


def build_router(store: Store) -> Router:
    """Every resource's routes, their handlers bound to ``store``."""
    rt = Router()
    for route in ROUTES:
        rt.add(route.method, route.path, functools.partial(route.handler, store))
    return rt


def _public(obj: Any) -> Any:
    """A handler's result without internal ``_`` keys (in each object of a list too)."""
    if isinstance(obj, dict):
        if obj.get("object") == "list" and isinstance(obj.get("data"), list):
            return {**obj, "data": [_public(o) for o in obj["data"]]}
        return public(obj)
    return obj


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


_API_KEY_RE = re.compile(r"^(sk|rk)_(test|live)?_?[A-Za-z0-9_]+$")


def _api_key(request: Request) -> tuple[str | None, StripeError | None]:
    auth = request.headers.get("authorization")
    if not auth:
        return None, StripeError(
            401,
            "You did not provide an API key. You need to provide your API key in the Authorization "
            "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See "
            "https://stripe.com/docs/api#authentication for details, or we can help at "
            "https://support.stripe.com/.",
        )
    scheme, _, value = auth.partition(" ")
    key = value.strip()
    if scheme.lower() == "basic":
        with contextlib.suppress(ValueError):
            key = base64.b64decode(key).decode().partition(":")[0]
    elif scheme.lower() != "bearer":
        key = ""
    if not key or not _API_KEY_RE.match(key):
        shown = (key[:8] + "*" * 4 + key[-4:]) if len(key) > 12 else key
        return None, StripeError(401, f"Invalid API Key provided: {shown}")
    return key, None


_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class _CountChanges:
    """ASGI wrapper: every request that may mutate (not GET/HEAD/OPTIONS) bumps
    ``store.changes`` once it is done, so the periodic save knows there is something to save."""

    def __init__(self, app: Any, emu: EmulatorApp) -> None:
        self.app = app
        self.emu = emu

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in _READ_METHODS:
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["path"] != SNAPSHOT_PATH:
                self.emu.store.changes += 1


class EmulatorApp:
    def __init__(
        self,
        config: Config | None = None,
        *,
        state_file: str | Path | None = None,
        save_interval: float = DEFAULT_SAVE_INTERVAL_SECONDS,
    ) -> None:
        self.initial_config = copy.deepcopy(config or Config())
        self.store = Store(copy.deepcopy(self.initial_config))
        self.deliverer = WebhookDeliverer(self.store)
        self.router = build_router(self.store)
        self.persister: StatePersister | None = None
        if state_file is not None:
            self.persister = StatePersister(
                self.store, Path(state_file), self.initial_config, save_interval
            )
            self.persister.load()  # StateFileError if the file cannot be used

    def respond(
        self, status: int, body: bytes, request_id: str, headers: dict[str, str] | None = None
    ) -> Response:
        h = {
            "Request-Id": request_id,
            "Stripe-Version": API_VERSION,
            "Access-Control-Allow-Origin": "*",
        }
        if headers:
            h.update(headers)
        return Response(content=body, status_code=status, headers=h, media_type="application/json")

    def error_response(
        self, err: StripeError, request_id: str, extra: dict[str, str] | None = None
    ) -> Response:
        headers = dict(err.headers)
        if extra:
            headers.update(extra)
        return self.respond(err.status, _dumps(err.body(request_id)), request_id, headers)

    async def api(self, request: Request) -> Response:
        seen: dict[str, str] = {}
        response = await self._api(request, seen)
        if "route" in seen:
            self.store.request_log.add(seen["route"], response.status_code, seen["key"])
        return response

    async def _api(self, request: Request, seen: dict[str, str]) -> Response:
        s = self.store
        request_id = new_request_id()
        method = request.method.upper()
        path = request.url.path

        api_key, auth_err = _api_key(request)
        if auth_err is not None:
            return self.error_response(auth_err, request_id)
        matched = self.router.match(method, path)
        if matched is None:
            err = StripeError(
                404,
                f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
                "or we can help at https://support.stripe.com/.",
            )
            return self.error_response(err, request_id)
        template, handler, path_params = matched
        route = f"{method} {template}"
        about = (path_params.get("id", ""), request.query_params.get("customer", ""))
        seen.update(route=route, key="/".join(p for p in about if p))
        limited = s.limits.admit(route)
        if limited is not None:
            return self.error_response(rate_limited(limited), request_id)

        body = await request.body() if method == "POST" else b""
        try:
            pairs = parse_qsl(request.url.query, keep_blank_values=True)
            if body and path.startswith("/v2/"):
                # v2 bodies are JSON (FACTS)
                doc = json.loads(body)
                if not isinstance(doc, dict):
                    raise FormError("the JSON body must be an object")
                params = {**parse_pairs(pairs), **doc}
                pairs += sorted((k, json.dumps(v, sort_keys=True)) for k, v in params.items())
            else:
                if body:
                    pairs += parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
                params = parse_pairs(pairs)
        except (FormError, ValueError) as exc:
            return self.error_response(StripeError(400, str(exc)), request_id)

        idem_key = request.headers.get("idempotency-key") if method in ("POST", "DELETE") else None
        scope = (api_key or "", idem_key) if idem_key else None
        fingerprint = (method, path, "&".join(f"{k}={v}" for k, v in sorted(pairs)))
        if scope is not None:
            saved = s.saved_response(scope)
            if saved is not None:
                if saved.fingerprint != fingerprint:
                    err = StripeError(
                        400,
                        "Keys for idempotent requests can only be used with the same parameters they "
                        f"were first used with. Try using a key other than '{idem_key}' if you meant "
                        "to execute a different request.",
                        type="idempotency_error",
                        headers={"Stripe-Should-Retry": "false"},
                    )
                    return self.error_response(err, request_id)
                if 200 <= saved.status < 300:
                    s.record_stat(f"{method} {template}")
                return self.respond(
                    saved.status,
                    saved.body,
                    request_id,
                    {**saved.headers, "Idempotent-Replayed": "true"},
                )
            if scope in s.in_flight:
                err = StripeError(
                    409,
                    "There is currently another in-progress request using this Idempotent Key (that "
                    "probably means you submitted twice, and the other request is still going through): "
                    f"{idem_key}. Please try again later.",
                    type="idempotency_error",
                    code="idempotency_key_in_use",
                )
                return self.error_response(err, request_id)
            s.in_flight.add(scope)
        try:
            fault = self._draw_fault(method, path)
            if fault is not None and fault.latency_ms:
                await asyncio.sleep(fault.latency_ms / 1000.0)
            if fault is not None and fault.status and not fault.after:
                return self.error_response(self._fault_error(fault), request_id)

            ctx = RequestContext(request_id=request_id, idempotency_key=idem_key, api_key=api_key)
            saved_headers: dict[str, str] = {}
            save = True
            try:
                result = handler(ctx, params, **path_params)
                status, out = 200, _dumps(_public(result))
            except StripeError as err:
                status, out = err.status, _dumps(err.body(request_id))
                saved_headers = dict(err.headers)
                save = err.saved and err.status != 429
            except Exception:  # pragma: no cover - emulator bug surfaces as Stripe's api_error
                log.error("handler crashed:\n%s", traceback.format_exc())
                crash = StripeError(500, "An unknown error occurred", type="api_error")
                status, out = 500, _dumps(crash.body(request_id))
            if scope is not None and save:
                s.idempotency[scope] = SavedResponse(
                    fingerprint,
                    status,
                    out,
                    {**saved_headers, "Original-Request": request_id},
                    s.clock.now_float(),
                )
                s.purge_idempotency()
            if fault is not None and fault.status and fault.after:
                return self.error_response(self._fault_error(fault), request_id)
            if 200 <= status < 300:
                s.record_stat(f"{method} {template}")
            return self.respond(status, out, request_id, saved_headers)
        finally:
            if scope is not None:
                s.in_flight.discard(scope)

    def _draw_fault(self, method: str, path: str):
        for f in self.store.config.faults:
            if f.matches(method, path):
                if f.probability >= 1.0 or self.store.rng.random() < f.probability:
                    f.injected += 1
                    return f
        return None

    @staticmethod
    def _fault_error(fault: Any) -> StripeError:
        status, code = fault.status, fault.code
        if status == 429:
            if code == "lock_timeout":
                return StripeError(
                    429,
                    "This object cannot be accessed right now because another API request "
                    "or Stripe process is currently accessing it. If you see this error "
                    "intermittently, retry the request.",
                    code="lock_timeout",
                    headers={"Stripe-Should-Retry": "true"},
                )
            return rate_limited()
        if status == 402:
            return StripeError(
                402,
                "Your card was declined.",
                type="card_error",
                code=code or "card_declined",
            )
        if status >= 500:
            return StripeError(
                status,
                "An unknown error occurred (injected by the emulator).",
                type="api_error",
                headers={"Stripe-Should-Retry": "true"},
            )
        if status == 409:
            return StripeError(
                409,
                "This object cannot be accessed right now because another API request "
                "or Stripe process is currently accessing it.",
                code="lock_timeout",
            )
        return StripeError(status, f"Injected fault ({status}).", code=code)

    def build(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette):
            await self.deliverer.start()
            if self.persister is not None:
                await self.persister.start()
            try:
                yield
            finally:
                await self.deliverer.stop()
                if self.persister is not None:
                    await self.persister.stop()  # graceful shutdown (SIGTERM/SIGINT): save

        methods = ["GET", "POST", "DELETE", "PUT", "PATCH"]  # unknown verbs -> Stripe 404
        routes = [
            *admin_routes(self),
            Route("/v1/{path:path}", self.api, methods=methods),
            Route("/v2/{path:path}", self.api, methods=methods),
        ]
        app = Starlette(
            routes=routes, lifespan=lifespan, middleware=[Middleware(_CountChanges, emu=self)]
        )
        app.state.emulator = self
        return app


def create_app(
    config: Config | None = None,
    *,
    state_file: str | Path | None = None,
    save_interval: float = DEFAULT_SAVE_INTERVAL_SECONDS,
) -> Starlette:
    """A fresh emulator app (state lives in the returned app). With ``state_file`` the state is
    loaded from it now (``persist.StateFileError`` if unusable) and saved back to it."""
    return EmulatorApp(config, state_file=state_file, save_interval=save_interval).build()
