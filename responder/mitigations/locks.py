"""One lock per target, so concurrent alerts, re-deliveries and replicas never act on a target at once.

With Redis configured the lock is `SET key token NX PX ttl`, released only by its owner (a Lua
compare-and-delete), and it expires by itself if the holder dies. If Redis is configured but cannot be
reached, nothing is locked and nothing runs: `LockUnavailable` (fail closed). Without Redis the locks
are asyncio locks in this process, which is enough for the embedded, single-daemon setup.
"""

from __future__ import annotations

import abc
import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

from responder.config import MitigationsConfig
from responder.targets import Targets

if TYPE_CHECKING:
    import redis.asyncio as aioredis


class LockUnavailable(Exception):
    """The lock service cannot be asked: acting without a lock is not allowed."""


class TargetLocks(abc.ABC):
    @abc.abstractmethod
    def hold(self, key: str) -> AbstractAsyncContextManager[bool]:
        """`async with locks.hold(key) as held:` True when this caller holds the lock for the block."""

    async def close(self) -> None:
        pass


class LocalLocks(TargetLocks):
    def __init__(self) -> None:
        self._held: set[str] = set()

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[bool]:
        if key in self._held:
            yield False
            return
        self._held.add(key)
        try:
            yield True
        finally:
            self._held.discard(key)


_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class RedisLocks(TargetLocks):
    def __init__(self, client: aioredis.Redis, prefix: str, ttl: float, timeout: float) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_ms = max(1, int(ttl * 1000))
        self.timeout = timeout

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[bool]:
        import redis.asyncio as aioredis

        name = f"{self.prefix}lock:{key}"
        token = secrets.token_hex(16)
        try:
            async with asyncio.timeout(self.timeout):
                acquired = bool(await self.client.set(name, token, nx=True, px=self.ttl_ms))
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            raise LockUnavailable(f"redis lock service unreachable: {type(exc).__name__}: {exc}") from exc
        if not acquired:
            yield False
            return
        try:
            yield True
        finally:
            try:
                async with asyncio.timeout(self.timeout):
                    await self.client.eval(_RELEASE, 1, name, token)
            except (aioredis.RedisError, OSError, TimeoutError):
                pass  # the lock expires on its own after the TTL

    async def close(self) -> None:
        await self.client.aclose()


async def open_locks(config: MitigationsConfig, targets: Targets, stack: AsyncExitStack) -> TargetLocks:
    """The configured lock service; its client is closed with `stack`."""
    if config.redis is None:
        return LocalLocks()
    import redis.asyncio as aioredis

    if config.redis.url is not None:
        secret = config.redis.url.resolve()
        if secret is None:
            raise ValueError(f"mitigations.redis.url: {config.redis.url.env or config.redis.url.file} is empty")
        url = secret.reveal()
    else:
        assert config.redis.target is not None
        secret = targets.spec("redis", config.redis.target).url.resolve()
        if secret is None:
            raise ValueError(f"targets.redis.{config.redis.target}.url is empty")
        url = secret.reveal()
    timeout = config.redis.timeout
    client = aioredis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    locks = RedisLocks(client, config.redis.key_prefix, config.lock_ttl, timeout)
    stack.push_async_callback(locks.close)
    return locks
