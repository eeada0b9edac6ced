"""The baseline for the ingest benchmark: a bare aiohttp app that parses the same JSON and answers 200
without storing anything. Our ingest is reported as a fraction of what this does on the same machine."""

from __future__ import annotations

import argparse
import json

from aiohttp import web


async def accept(request: web.Request) -> web.Response:
    payload = json.loads(await request.read())
    return web.json_response({"status": "accepted", "alerts": len(payload["alerts"])})


async def ready(request: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    args = parser.parse_args()
    loop = None
    if args.loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/webhooks/alertmanager", accept)
    app.router.add_get("/readyz", ready)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
