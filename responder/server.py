"""The HTTP surface: webhook intakes, health, readiness and metrics.

A webhook is answered 2xx only after its alerts are committed; a store that cannot commit gets a
503 so the sender retries. Every refusal is a JSON body that names the problem.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from responder.daemon import Daemon
from responder.intake import Intake, PayloadError, Unauthorized
from responder.store import StoreUnavailable

log = logging.getLogger(__name__)

DAEMON = web.AppKey("daemon", Daemon)


def problem(status: int, error: str, detail: str = "", **fields: Any) -> web.Response:
    body: dict[str, Any] = {"error": error}
    if detail:
        body["detail"] = detail
    body.update(fields)
    return web.json_response(body, status=status)


class BodyTooLarge(Exception):
    pass


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """Read at most `limit` bytes within `timeout`; a slow or endless body cannot hold a worker."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async with asyncio.timeout(timeout):
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
    return b"".join(chunks)


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
        except PayloadError as exc:
            return problem(400, "invalid payload", exc.message, field=exc.field)
        try:
            receipt = await daemon.store.record_delivery(delivery)
        except StoreUnavailable as exc:
            log.warning("webhook %s refused with 503: %s", intake.name, exc)
            return problem(503, "store unavailable", "alerts were not stored; retry later")
        for alert in delivery.alerts:
            daemon.metrics.alerts_received.labels(alert.source, alert.status.value).inc()
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


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
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
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
