"""The operator console's ASGI app (Starlette, server-rendered Jinja2 pages, no JavaScript build)
and `serve()`. Every action goes through the workflows, signals and updates the CLI uses; the
console itself never writes to Postgres (its pool only reads)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from temporalio.client import Client
from temporalio.service import RPCError

from billing import db
from console import customers, overview, records, runs
from console.settings import ConsoleSettings
from console.web import Console, SecurityHeaders, refuse
from starter.kit import Unreachable

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
POOL_MAX = 5


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


ROUTES = [
    Route("/health", health),
    Route("/login", overview.login_form, methods=["GET"]),
    Route("/login", overview.login, methods=["POST"]),
    Route("/logout", overview.logout, methods=["POST"]),
    Route("/", overview.overview),
    Route("/pause", overview.pause, methods=["POST"]),
    Route("/resume", overview.resume, methods=["POST"]),
    Route("/runs", runs.runs_list),
    Route("/runs/search", runs.runs_search, methods=["GET"]),
    Route("/runs/search", runs.runs_of_customer, methods=["POST"]),
    Route("/runs/{ref}", runs.run_page),
    Route("/runs/{ref}/discrepancies.csv", runs.run_csv),
    Route("/runs/{ref}/approve", runs.approve, methods=["POST"]),
    Route("/runs/{ref}/reject", runs.reject, methods=["POST"]),
    Route("/customers", customers.lookup_form, methods=["GET"]),
    Route("/customers", customers.show, methods=["POST"]),
    Route("/customers/repair", customers.repair, methods=["POST"]),
    Route("/repairs/{run_id}", customers.follow),
    Route("/audit", records.audit_page, methods=["GET"]),
    Route("/audit", records.audit_search, methods=["POST"]),
    Route("/revenue", records.revenue_list),
    Route("/revenue/{ref}", records.revenue_run),
    Route("/revenue/{ref}/{part}.csv", records.revenue_csv),
    Route("/incidents", records.incident_page),
    Route("/incidents/report.{fmt}", records.incident_download),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]


def create_app(settings: ConsoleSettings, database_url: str, *, client: Client | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await db.create_pool(database_url, min_size=1, max_size=POOL_MAX)
        app.state.console = Console(settings, pool, client)
        try:
            yield
        finally:
            await pool.close()

    return Starlette(routes=ROUTES, lifespan=lifespan, middleware=[Middleware(SecurityHeaders)],
                     exception_handlers={Unreachable: _unavailable, RPCError: _unavailable,
                                         OSError: _unavailable, asyncpg.PostgresError: _unavailable})


async def _unavailable(request: Request, exc: Exception) -> Response:
    """Temporal or Postgres did not answer: one line, 503, as the CLI says it (exit 1)."""
    message = exc.message if isinstance(exc, RPCError) else str(exc)
    log.warning("%s %s: %s", request.method, request.url.path, message)
    return refuse(503, f"not available right now: {message.splitlines()[0] if message else type(exc).__name__}")


def serve(settings: ConsoleSettings, database_url: str) -> None:
    import uvicorn

    problem = settings.startup_problem()
    if problem:
        raise SystemExit(f"error: {problem}")
    log.info("console on http://%s:%d (auth: %s)", settings.host, settings.port, settings.auth)
    uvicorn.run(create_app(settings, database_url), host=settings.host, port=settings.port, log_level="info",
                access_log=False, log_config=None, proxy_headers=False)
