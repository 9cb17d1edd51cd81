"""Sign-in and the overview: paused or not (pause/resume with a reason), last successful run and
its age, schedules, open findings by kind, inbox backlog, daily checks, running workflows.
Pause and resume go through AutoHealControl exactly as `billing-recon pause/resume` does
(`starter.autoheal_commands.set_global_pause`), with the signed-in actor."""

from __future__ import annotations

import asyncpg
import typer
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from console import csrf
from console.auth import SESSION_COOKIE, find_token, new_session
from console.queries import open_findings_by_kind, run_ref, run_row
from console.settings import Role
from console.web import Console, Ctx, guard, refuse, set_csrf_cookie, templates
from starter.autoheal_commands import set_global_pause
from starter.kit import Unreachable
from starter.status_commands import gather_status

LOGIN_NO_ACTOR = ""  # the login form's CSRF token is bound to no actor yet


async def login_form(request: Request) -> Response:
    app: Console = request.app.state.console
    if app.settings.auth != "token":
        return refuse(404, "sign-in is done by the authenticating proxy")
    nonce = csrf.nonce_of(request) or csrf.new_nonce()
    body = templates.get_template("login.html").render(
        csrf_token=csrf.token_for(app.settings, nonce, LOGIN_NO_ACTOR), error=None)
    response = HTMLResponse(body)
    set_csrf_cookie(response, app.settings, nonce)
    return response


async def login(request: Request) -> Response:
    """The token arrives in the POST body (never in a URL) and becomes a signed session cookie."""
    app: Console = request.app.state.console
    if app.settings.auth != "token":
        return refuse(404, "sign-in is done by the authenticating proxy")
    form = await request.form()
    presented = form.get(csrf.CSRF_FIELD)
    why = csrf.check(app.settings, request, presented if isinstance(presented, str) else None, LOGIN_NO_ACTOR)
    if why is not None:
        return refuse(403, why)
    token = form.get("token")
    if not isinstance(token, str) or find_token(app.settings, token.strip()) is None:
        body = templates.get_template("login.html").render(csrf_token=presented, error="unknown token")
        return HTMLResponse(body, status_code=401)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(SESSION_COOKIE, new_session(app.settings, token.strip()), httponly=True, samesite="strict",
                        secure=app.settings.secure_cookies, max_age=app.settings.session_hours * 3600, path="/")
    return response


@guard(Role.VIEWER, post=True)
async def logout(ctx: Ctx) -> Response:
    response = RedirectResponse("/login" if ctx.app.settings.auth == "token" else "/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@guard(Role.VIEWER)
async def overview(ctx: Ctx) -> Response:
    try:
        client = await ctx.app.temporal()
    except Unreachable:
        client = None  # gather_status tries once more and reports Temporal unreachable on the page
    status = await gather_status(client)
    run_id = status["open_discrepancies_run"]
    last = status["last_successful_reconciliation"]
    by_kind: list[dict] = []
    async with ctx.app.pool.acquire() as conn:
        if run_id:
            by_kind = await open_findings_by_kind(conn, run_id)
        # Links name runs by their opaque ref (console.queries.run_ref), never by workflow id.
        refs = {r: await _ref(conn, r) for r in {run_id, last["run_id"] if last else None} if r}
    return ctx.render("overview.html", status=status, by_kind=by_kind, refs=refs)


async def _ref(conn: asyncpg.Connection, run_id: str) -> str:
    run = await run_row(conn, run_id)
    return run_ref(run) if run else run_id


async def _switch(ctx: Ctx, paused: bool) -> Response:
    reason = ctx.field("reason")
    if paused and not reason:
        return refuse(400, "a pause needs a reason (it is audited and shown here and in `status`)")
    try:
        _, changed = await set_global_pause(paused, ctx.who.actor, reason)
    except typer.Exit:
        return refuse(503, "the signal was sent, but no worker applied it: is a worker running?")
    verb = "paused" if paused else "resumed"
    return RedirectResponse(f"/?done={verb if changed else 'unchanged'}", status_code=303)


@guard(Role.OPERATOR, post=True)
async def pause(ctx: Ctx) -> Response:
    return await _switch(ctx, True)


@guard(Role.OPERATOR, post=True)
async def resume(ctx: Ctx) -> Response:
    return await _switch(ctx, False)
