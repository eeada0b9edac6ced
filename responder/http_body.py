"""Reading a request body on the HTTP edges: bounded in size and in time."""

from __future__ import annotations

import asyncio

from aiohttp import web


class BodyTooLarge(Exception):
    pass


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """Read at most `limit` bytes within `timeout`; a slow or endless body cannot hold a worker."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    if request.content.is_eof():
        # The whole body came with the headers (a usual webhook): nothing to wait for, no timer to set.
        body = request.content.read_nowait()
        if len(body) > limit:
            raise BodyTooLarge
        return body
    chunks, size = [], 0
    async with asyncio.timeout(timeout):
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
    return b"".join(chunks)
