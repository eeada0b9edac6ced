"""The HTTP surface: webhook intakes, Slack approvals, the kill switch API, health, readiness and metrics.

A webhook is answered 2xx only after its alerts are committed; a store that cannot commit gets a
503 so the sender retries. Every refusal is a JSON body that names the problem.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from responder.console.clicks import BadInteraction, parse_press
from responder.daemon import Daemon
from responder.http_body import BodyTooLarge, read_body
from responder.intake import Intake, PayloadError, Unauthorized
from responder.intake.limits import check_delivery
from responder.jobs import CONSOLE_QUEUE
from responder.mitigations.approvals import Rejected, verify_fresh
from responder.replay import only_alert, parse_payload, replaying, result_json, run_replay
from responder.store import StoreUnavailable
from responder.store.actions import KILL_SWITCH
from responder.store.console import ConsoleStore
from responder.ui import setup_console

log = logging.getLogger(__name__)

DAEMON = web.AppKey("daemon", Daemon)


# Seconds a sender is asked to wait when the store cannot commit; the store has already retried briefly.
STORE_RETRY_AFTER = 5


def problem(status: int, error: str, detail: str = "", *, headers: dict[str, str] | None = None,
            **fields: Any) -> web.Response:
    body: dict[str, Any] = {"error": error}
    if detail:
        body["detail"] = detail
    body.update(fields)
    return web.json_response(body, status=status, headers=headers)


def store_unavailable(detail: str = "retry later") -> web.Response:
    return problem(503, "store unavailable", detail, headers={"Retry-After": str(STORE_RETRY_AFTER)})


def webhook_handler(daemon: Daemon, intake: Intake) -> Callable[[web.Request], Awaitable[web.Response]]:
    server = daemon.config.server

    async def handle(request: web.Request) -> web.Response:
        response = await _accept(request)
        daemon.metrics.webhook_requests.labels(intake.name, str(response.status)).inc()
        return response

    async def _accept(request: web.Request) -> web.Response:
        try:
            intake.authenticate_headers(request.headers, request.remote)
            body = await read_body(request, server.max_body_bytes, server.read_timeout)
            intake.authenticate_body(request.headers, body)
        except Unauthorized as exc:
            return problem(401, "unauthorized", str(exc))
        except BodyTooLarge:
            return problem(413, "payload too large", f"the limit is {server.max_body_bytes} bytes")
        except TimeoutError:
            return problem(408, "request timeout", f"the body did not arrive within {server.read_timeout:g}s")
        try:
            delivery = intake.parse(body, request.headers)
            check_delivery(delivery, server.limits)
        except PayloadError as exc:
            return problem(400, "invalid payload", exc.message, field=exc.field)
        try:
            with daemon.intake_first.delivering():
                receipt = await daemon.store.record_delivery(delivery)
        except StoreUnavailable as exc:
            log.warning("webhook %s refused with 503: %s", intake.name, exc)
            return store_unavailable("alerts were not stored; retry later")
        # One label lookup per (source, status), not per alert: a storm's 50-alert requests add up.
        for (source, status), count in Counter((a.source, a.status.value) for a in delivery.alerts).items():
            daemon.metrics.alerts_received.labels(source, status).inc(count)
        if receipt.opened or receipt.resolved:
            daemon.wake_pipeline()
        return web.json_response({
            "status": "duplicate" if receipt.duplicate else "accepted",
            "payload_id": receipt.payload_id,
            "alerts": receipt.alerts,
            "incidents_opened": receipt.opened,
            "incidents_resolved": receipt.resolved,
        })

    return handle


async def slack_interactions(request: web.Request) -> web.Response:
    """A press of a console button (approve, deny, silence, acknowledge, re-run). 401 for anything not
    freshly signed by Slack; otherwise the press is stored with its job and answered at once (Slack wants
    an answer within 3 s); what it did is posted afterwards."""
    daemon = request.app[DAEMON]
    server = daemon.config.server
    try:
        body = await read_body(request, server.max_body_bytes, server.read_timeout)
        await verify_fresh(daemon.config.mitigations.approvals, daemon.actions, request.headers, body)
        press = parse_press(body)
        click_id, new = await ConsoleStore(daemon.store).record_click(press.row())
    except Rejected as exc:
        return problem(401, "unauthorized", str(exc))
    except BadInteraction as exc:
        return problem(400, "invalid interaction", str(exc))
    except BodyTooLarge:
        return problem(413, "payload too large", f"the limit is {server.max_body_bytes} bytes")
    except TimeoutError:
        return problem(408, "request timeout", "the body did not arrive in time")
    except StoreUnavailable:
        return store_unavailable()
    if new:
        daemon.wake(CONSOLE_QUEUE)
    log.info("slack click %s: %s by %s%s", click_id, press.button.action_id, press.user_id, "" if new else " (repeat)")
    return web.json_response({"click_id": click_id, "queued": new})


def api_caller(request: web.Request) -> str:
    """Who calls an /api endpoint; raises 401 unless the request carries server.api_token."""
    ref = request.app[DAEMON].config.server.api_token
    token = ref.resolve() if ref is not None else None
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if token is None or not given or not hmac.compare_digest(given.encode(), token.reveal().encode()):
        raise Unauthorized("a valid 'Authorization: Bearer <server.api_token>' is required")
    return f"api:{request.remote or '?'}"


async def kill_switch(request: web.Request) -> web.Response:
    """GET: the stored switch. POST {"enabled": bool, "reason": str}: turn it on or off for every replica."""
    daemon = request.app[DAEMON]
    try:
        caller = api_caller(request)
    except Unauthorized as exc:
        return problem(401, "unauthorized", str(exc))
    try:
        if request.method == "POST":
            try:
                body = await request.json()
                enabled = body["enabled"]
                reason = str(body.get("reason", ""))
            except (ValueError, KeyError, TypeError):
                return problem(400, "invalid body", 'expected {"enabled": true|false, "reason": "..."}')
            if not isinstance(enabled, bool):
                return problem(400, "invalid body", "enabled must be true or false")
            await daemon.actions.set_setting(KILL_SWITCH, {"enabled": enabled, "reason": reason}, caller)
            log.warning("kill switch turned %s by %s: %s", "ON" if enabled else "off", caller, reason)
        stored = await daemon.actions.kill_switch()
    except StoreUnavailable:
        return store_unavailable()
    return web.json_response({"enabled": stored is not None, **(stored or {})})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    if daemon.supervisor.down:
        return problem(503, "not ready", "tasks down: " + ", ".join(daemon.supervisor.down))
    if not daemon.ready:
        return problem(503, "not ready", "starting or shutting down")
    try:
        async with asyncio.timeout(2):
            await daemon.store.ping()
    except (StoreUnavailable, TimeoutError) as exc:
        return problem(503, "not ready", f"store unreachable: {exc}")
    return web.json_response({"status": "ready", "rules": len(daemon.ruleset.rules)})


async def metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[DAEMON].metrics.registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def replay(request: web.Request) -> web.Response:
    """POST {"alert_id": N, "enforce": false}: replay a stored alert on a throwaway store; the bundle as JSON."""
    daemon = request.app[DAEMON]
    try:
        api_caller(request)
    except Unauthorized as exc:
        return problem(401, "unauthorized", str(exc))
    try:
        body = await request.json()
        alert_id = body["alert_id"]
        enforce = body.get("enforce", False)
    except (ValueError, KeyError, TypeError):
        return problem(400, "invalid body", 'expected {"alert_id": <id>, "enforce": false}')
    if not isinstance(alert_id, int) or isinstance(alert_id, bool) or not isinstance(enforce, bool):
        return problem(400, "invalid body", "alert_id must be an integer and enforce true or false")
    row = await daemon.store.get_alert(alert_id)
    if row is None:
        return problem(404, "not found", f"no stored alert with id {alert_id}")
    try:
        delivery = parse_payload(daemon.config, bytes(row["payload_body"]), row["source"])
    except PayloadError as exc:
        return problem(422, "stored payload no longer parses", exc.message, field=exc.field)
    delivery = only_alert(delivery, row["fingerprint"], float(row["starts_at"]))
    try:
        async with replaying(daemon.config, daemon.ruleset, enforce=enforce) as replayer:
            results = await run_replay(replayer, delivery, timeout=daemon.config.pipeline.job_timeout)
    except TimeoutError:
        return problem(504, "replay timed out", f"not finished within {daemon.config.pipeline.job_timeout:g}s")
    return web.json_response({"alert_id": alert_id, "enforce": enforce, "results": [result_json(r) for r in results]})


async def console_home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/ui/incidents")


@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem(exc.status, exc.reason.lower(), f"{request.method} {request.path}")


def build_app(daemon: Daemon) -> web.Application:
    # The body limit is enforced by read_body (with a JSON 413); aiohttp's own cap sits above it.
    app = web.Application(middlewares=[json_errors], client_max_size=daemon.config.server.max_body_bytes + 1)
    app[DAEMON] = daemon
    app.cleanup_ctx.append(daemon.resources)
    app.cleanup_ctx.append(daemon.background)
    for intake in daemon.intakes:
        app.router.add_post(intake.path, webhook_handler(daemon, intake))
    app.router.add_post("/slack/interactions", slack_interactions)
    app.router.add_get("/api/kill-switch", kill_switch)
    app.router.add_post("/api/kill-switch", kill_switch)
    app.router.add_post("/api/replay", replay)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", console_home)
    setup_console(app, daemon)
    return app
