"""The listening socket's own defences: a cap on open connections and a deadline for a request's head.

aiohttp closes a connection that stays idle after a response (`keepalive_timeout`), but it waits for
the first request of a new connection for ever, and it never counts connections: a thousand clients
that connect and send nothing (or half a header line) would each hold a socket, a parser and a task.
Here every connection must deliver a complete request head within `header_timeout`, and connections
beyond `max_connections` are closed as soon as they are accepted.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from responder.metrics import Metrics

log = logging.getLogger(__name__)

HEAD_END = b"\r\n\r\n"


class ConnectionGuard:
    def __init__(self, max_connections: int, header_timeout: float, metrics: Metrics | None = None) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.metrics = metrics
        self.open = 0

    def protocol(self, inner: asyncio.Protocol) -> asyncio.Protocol:
        return _GuardedProtocol(self, inner)

    def _refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.connections_closed.labels(reason).inc()


class _GuardedProtocol(asyncio.Protocol):
    """Stands in front of aiohttp's protocol for one connection, forwarding everything to it."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.BaseTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.tail = b""
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.guard.open >= self.guard.max_connections:
            self.guard._refused("max_connections")
            transport.close()
            return
        self.guard.open += 1
        self.counted = True
        self.transport = transport
        self.timer = asyncio.get_running_loop().call_later(self.guard.header_timeout, self._too_slow)
        self.inner.connection_made(transport)

    def _too_slow(self) -> None:
        self.timer = None
        if self.transport is not None:
            self.guard._refused("header_timeout")
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.timer is not None:
            # The head is complete once a blank line arrived (it may straddle two reads).
            if HEAD_END in self.tail + data[:4] or HEAD_END in data:
                self.timer.cancel()
                self.timer = None
            else:
                self.tail = (self.tail + data)[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.counted:
            return
        self.guard.open -= 1
        self.transport = None
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through a ConnectionGuard."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard, *,
                 reuse_port: bool = False) -> None:
        super().__init__(runner)
        self.host, self.port, self.guard, self.reuse_port = host, port, guard, reuse_port

    @property
    def name(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: self.guard.protocol(server()), self.host, self.port, reuse_address=True,
            reuse_port=self.reuse_port or None, backlog=self._backlog)
