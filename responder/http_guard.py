"""The listening socket's own defences: a cap on open connections, a deadline for a request's head, and
no HTTP machinery for a connection until its first request head is complete.

aiohttp closes a connection that stays idle after a response (`keepalive_timeout`), but it waits for
the first request of a new connection for ever, and builds its parser, buffers and task as soon as the
connection is accepted: a thousand clients that connect and send nothing (or half a header line)
would each hold all of that. Here a new connection is only a socket and a small buffer until a complete
request head arrived (within `header_timeout`, and at most `MAX_HEAD_BYTES`); then aiohttp gets it, as
if the bytes had just arrived. Connections beyond `max_connections` are closed as soon as they are
accepted.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable

from aiohttp import web

from responder.metrics import Metrics

HEAD_END = b"\r\n\r\n"
# aiohttp refuses a header line over 8190 bytes; a whole head larger than this is not a webhook.
MAX_HEAD_BYTES = 64 * 1024
# After connections close, their read buffers (up to 256 kB per socket read) are free but glibc keeps
# the pages: a burst of hostile connections would leave the process that much larger for good.
# malloc_trim hands free pages back to the system; it runs at most once per this many seconds.
TRIM_DELAY = 1.0
# Bytes read from a socket at once (asyncio and uvloop read 256 kB): what a burst of connections that
# all send big bodies makes the process hold before any handler could refuse one.
READ_BYTES = 64 * 1024


def _malloc_trim() -> Callable[[], object] | None:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    trim = getattr(libc, "malloc_trim", None)  # glibc only; elsewhere memory is left to the allocator
    return (lambda: trim(0)) if trim is not None else None


MALLOC_TRIM = _malloc_trim()


class ConnectionGuard:
    def __init__(self, max_connections: int, header_timeout: float, metrics: Metrics | None = None) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.metrics = metrics
        self.open = 0
        self.trim: asyncio.TimerHandle | None = None
        # One read buffer for every connection: each read is copied out before the next one starts
        # (the event loop reads one socket at a time), so idle connections hold no buffer at all.
        self.buffer = memoryview(bytearray(READ_BYTES))

    def protocol(self, make_inner: Callable[[], asyncio.Protocol]) -> asyncio.BaseProtocol:
        return _GuardedProtocol(self, make_inner)

    def closed(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.connections_closed.labels(reason).inc()

    def connection_gone(self) -> None:
        self.open -= 1
        if MALLOC_TRIM is not None and self.trim is None:
            self.trim = asyncio.get_running_loop().call_later(TRIM_DELAY, self._trim)

    def _trim(self) -> None:
        self.trim = None
        if MALLOC_TRIM is not None:
            MALLOC_TRIM()


class _GuardedProtocol(asyncio.BufferedProtocol):
    """Holds a new connection until its first request head is complete, then hands it to aiohttp's
    protocol (created only then) and forwards everything to it, read READ_BYTES at a time."""

    def __init__(self, guard: ConnectionGuard, make_inner: Callable[[], asyncio.Protocol]) -> None:
        self.guard = guard
        self.make_inner = make_inner
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.BaseTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.head = bytearray()
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.guard.open >= self.guard.max_connections:
            self.guard.closed("max_connections")
            transport.close()
            return
        self.guard.open += 1
        self.counted = True
        self.transport = transport
        self.timer = asyncio.get_running_loop().call_later(self.guard.header_timeout, self._close, "header_timeout")

    def _close(self, reason: str) -> None:
        self.timer = None
        if self.transport is not None:
            self.guard.closed(reason)
            self.transport.close()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.guard.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.guard.buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)
            return
        if self.transport is None or self.transport.is_closing():
            return
        if not self.head and HEAD_END in data:
            received = data  # the usual case: the whole head in one read, handed over without a copy
        else:
            # Only the new bytes (and the three before them) can complete the blank line ending the head.
            start = max(0, len(self.head) - 3)
            self.head += data
            if HEAD_END not in self.head[start:]:
                if len(self.head) > MAX_HEAD_BYTES:
                    self._close("head_too_large")
                return
            received, self.head = bytes(self.head), bytearray()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.inner = self.make_inner()
        self.inner.connection_made(self.transport)
        self.inner.data_received(received)

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            return self.inner.eof_received()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.counted:
            return
        self.counted = False
        self.guard.connection_gone()
        self.transport = None
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through a ConnectionGuard."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard, *,
                 reuse_port: bool = False, backlog: int = 1024) -> None:
        # A deep accept queue: a burst of connections is accepted (and judged by the guard) at once,
        # instead of the kernel dropping SYNs and every client waiting a second to retry.
        super().__init__(runner, backlog=backlog)
        self.host, self.port, self.guard, self.reuse_port = host, port, guard, reuse_port

    @property
    def name(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: self.guard.protocol(server), self.host, self.port, reuse_address=True,
            reuse_port=self.reuse_port or None, backlog=self._backlog)
