"""A local application admin endpoint (the target of `http.request` actions) that records every call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class AdminEndpoint:
    status: int = 200
    # Seconds to take before answering (an action still in flight when its daemon dies).
    delay: float = 0.0
    calls: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        self.calls.append({"method": request.method, "path": request.path_qs, "raw_path": request.raw_path,
                           "body": body, "authorization": request.headers.get("Authorization"),
                           # the client's address and port: one per connection it opened
                           "peer": request.transport.get_extra_info("peername") if request.transport else None})
        await asyncio.sleep(self.delay)
        return web.json_response({"ok": self.status < 400}, status=self.status)


@asynccontextmanager
async def admin_endpoint(status: int = 200, delay: float = 0.0) -> AsyncIterator[AdminEndpoint]:
    endpoint = AdminEndpoint(status, delay)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", endpoint.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    endpoint.url = str(server.make_url("")).rstrip("/")
    try:
        yield endpoint
    finally:
        await server.close()
