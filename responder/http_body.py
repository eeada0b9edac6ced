"""Reading a request body on the HTTP edges: bounded in size, in time and, before the sender is known,
in how many are read at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the limit is {limit} bytes")
        self.limit = limit


class ClientGone(Exception):
    """The client closed the connection (or broke the framing) before its body was complete."""


class TooManyUnverified(Exception):
    """Every slot for reading a not-yet-authenticated body is taken."""


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """Read at most `limit` bytes within `timeout`; a slow or endless body cannot hold a worker."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(limit)
    if request.content.is_eof():
        # The whole body came with the headers (a usual webhook): nothing to wait for, no timer to set.
        body = request.content.read_nowait()
        if len(body) > limit:
            raise BodyTooLarge(limit)
        return body
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(limit)
                chunks.append(chunk)
    except (ConnectionError, HttpProcessingError) as exc:
        raise ClientGone(type(exc).__name__) from None
    return b"".join(chunks)


class UnverifiedBodies:
    """Bodies whose sender is only proven by a signature over the body must be read before anything
    about them can be trusted: at most `slots` of them are held in memory at once. The rest are
    refused at once (503; every signing sender retries) instead of queueing memory."""

    def __init__(self, slots: int) -> None:
        self.free = slots

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if self.free <= 0:
            raise TooManyUnverified
        self.free -= 1
        try:
            yield
        finally:
            self.free += 1
