"""The HTTP surface: webhook intakes, Slack approvals, the kill switch API, health, readiness and metrics.

A webhook is answered 2xx only after its alerts are committed; a store that cannot commit gets a
503 so the sender retries. Every refusal is a JSON body that names the problem.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import HttpVersion11, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from responder.console.clicks import BadInteraction, parse_press
from responder.daemon import Daemon
from responder.http_body import BodyTooLarge, ClientGone, TooManyUnverified, UnverifiedBodies, read_body
from responder.intake import Intake, PayloadError, Unauthorized
from responder.intake.auth import constant_time_equal
from responder.intake.limits import check_delivery
from responder.jobs import CONSOLE_QUEUE
from responder.metrics import labelled
from responder.mitigations.approvals import Rejected, check_headers, verify_fresh
from responder.replay import only_alert, parse_payload, replaying, result_json, run_replay
from responder.store import StoreUnavailable, WriterFailed
from responder.store.actions import KILL_SWITCH
from responder.store.console import ConsoleStore
from responder.ui import setup_console

log = logging.getLogger(__name__)

DAEMON = web.AppKey("daemon", Daemon)
# Ids are 64-bit in the store; anything larger is a malformed request, not a lookup.
MAX_ID = 2**63 - 1


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


def json_body(body: dict[str, Any], status: int = 200) -> web.Response:
    """A JSON response encoded by orjson: the webhook answer is on the hot path."""
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


UNVERIFIED = web.AppKey("unverified_bodies", UnverifiedBodies)


async def read_request_body(request: web.Request, limit: int, timeout: float, *, verified: bool) -> bytes:
    """The body, read once the headers were checked. A body whose sender only its signature can prove
    takes one of the few unverified slots and must arrive within server.unverified_read_timeout."""
    if verified:
        return await read_body(request, limit, timeout)
    server = request.app[DAEMON].config.server
    with request.app[UNVERIFIED].slot():
        return await read_body(request, min(limit, server.max_unverified_body_bytes),
                               min(timeout, server.unverified_read_timeout))


def refused(response: web.Response) -> web.Response:
    """A refusal answered before the body was read (or while reading it): the connection is closed
    after the answer, so the rest of the body is never read, not even to be thrown away."""
    response.force_close()
    return response


def body_problem(exc: Exception) -> web.Response:
    """The answer to a body that could not be read (BodyTooLarge, TimeoutError, TooManyUnverified, ClientGone)."""
    if isinstance(exc, BodyTooLarge):
        return refused(problem(413, "payload too large", str(exc)))
    if isinstance(exc, TooManyUnverified):
        return refused(problem(503, "busy", "too many unauthenticated bodies are being read; retry",
                               headers={"Retry-After": "1"}))
    if isinstance(exc, ClientGone):
        # Nobody is left to read the answer: a line in the log, no traceback.
        log.info("client went away before its body was complete (%s)", exc)
        return refused(problem(400, "incomplete body", "the connection closed before the body was complete"))
    return refused(problem(408, "request timeout", "the body did not arrive in time"))


def webhook_handler(daemon: Daemon, intake: Intake) -> Callable[[web.Request], Awaitable[web.Response]]:
    server = daemon.config.server
    requests = labelled(daemon.metrics.webhook_requests)
    received = labelled(daemon.metrics.alerts_received)

    async def handle(request: web.Request) -> web.Response:
        status = 500  # counted even when something below fails unexpectedly
        try:
            response = await _accept(request)
            status = response.status
            return response
        finally:
            requests(intake.name, str(status)).inc()

    async def _accept(request: web.Request) -> web.Response:
        try:
            intake.authenticate_headers(request.headers, request.remote)
            body = await read_request_body(request, server.max_body_bytes, server.read_timeout,
                                           verified=not intake.body_authenticates)
            intake.authenticate_body(request.headers, body)
        except Unauthorized as exc:
            return refused(problem(401, "unauthorized", str(exc)))
        except (BodyTooLarge, TimeoutError, TooManyUnverified, ClientGone) as exc:
            return body_problem(exc)
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
            why = f": {exc}" if isinstance(exc, WriterFailed) else ""  # its message is meant to be shown
            return store_unavailable(f"alerts were not stored{why}; retry later")
        # One label lookup per (source, status), not per alert: a storm's 50-alert requests add up.
        for key, count in Counter((a.source, a.status.value) for a in delivery.alerts).items():
            received(*key).inc(count)
        if receipt.opened or receipt.resolved or receipt.updated:
            daemon.wake_pipeline()
        return json_body({
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
    approvals = daemon.config.mitigations.approvals
    try:
        check_headers(approvals, request.headers, time.time())
        body = await read_request_body(request, approvals.max_body_bytes, server.read_timeout, verified=False)
        await verify_fresh(approvals, daemon.actions, request.headers, body)
        press = parse_press(body)
        click_id, new = await ConsoleStore(daemon.store).record_click(press.row())
    except Rejected as exc:
        return refused(problem(401, "unauthorized", str(exc)))
    except BadInteraction as exc:
        return problem(400, "invalid interaction", str(exc))
    except (BodyTooLarge, TimeoutError, TooManyUnverified, ClientGone) as exc:
        return body_problem(exc)
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
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if token is None or scheme.lower() != "bearer" or not constant_time_equal(given.strip(), token.reveal()):
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
    if not isinstance(alert_id, int) or isinstance(alert_id, bool) or not isinstance(enforce, bool) \
            or not 0 < alert_id <= MAX_ID:
        return problem(400, "invalid body", "alert_id must be a positive (64-bit) integer and enforce true or false")
    if enforce:
        # A replay runs on a throwaway store, out of reach of the live kill switch, cooldowns, budgets
        # and audit: acting on real targets from here would bypass them.
        return problem(403, "enforce refused", "a replay over the API never acts; send the alert to its webhook"
                       " (the live guards apply) or use `responder replay --enforce --record`")
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


async def expect_continue(request: web.Request) -> None:
    """`Expect: 100-continue` as aiohttp answers it; any other value is a 417. (aiohttp's own handler
    puts the header's value in its error text and fails with a 500 when it is not valid UTF-8.)"""
    if request.version == HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return
    raise web.HTTPExpectationFailed(text="unsupported Expect header")


@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem(exc.status, exc.reason.lower(), f"{request.method} {request.path}")
    except Exception:
        # A bug, not the client's fault: logged once with its traceback, answered as JSON.
        log.exception("%s %s failed", request.method, request.path)
        return problem(500, "internal error", "see the daemon's log")


def build_app(daemon: Daemon) -> web.Application:
    # The body limit is enforced by read_body (with a JSON 413); aiohttp's own cap sits above it.
    app = web.Application(middlewares=[json_errors], client_max_size=daemon.config.server.max_body_bytes + 1)
    app[DAEMON] = daemon
    app[UNVERIFIED] = UnverifiedBodies(daemon.config.server.max_unverified_bodies)
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
    for route in app.router.routes():
        # aiohttp has no setter for a route's Expect handler, and its default one answers an undecodable
        # Expect value with a 500 (see expect_continue): every route gets ours.
        route._expect_handler = expect_continue
    return app
