"""Target locks on the real Redis: one holder at a time, released only by its owner, expiring by
themselves after a crash; an unreachable Redis refuses to lock at all."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from responder.mitigations.locks import LocalLocks, LockUnavailable, RedisLocks
from tests.support.services import free_port


async def test_redis_lock_has_one_holder_and_only_the_owner_releases_it(redis_url: str, redis_prefix: str) -> None:
    client = aioredis.from_url(redis_url)
    locks = RedisLocks(client, redis_prefix, ttl=5, timeout=2)
    try:
        async with locks.hold("kubernetes/prod/prod/deployment/api") as first:
            assert first is True
            async with locks.hold("kubernetes/prod/prod/deployment/api") as second:
                assert second is False
            # The refused second attempt did not release the first holder's lock.
            assert await client.exists(f"{redis_prefix}lock:kubernetes/prod/prod/deployment/api") == 1
            async with locks.hold("kubernetes/prod/prod/deployment/web") as other:
                assert other is True
            # Someone else's lock (a replica that took over after our TTL) survives our release.
            await client.set(f"{redis_prefix}lock:redis/cache", "someone-else")
            async with locks.hold("redis/cache") as taken:
                assert taken is False
        assert await client.exists(f"{redis_prefix}lock:kubernetes/prod/prod/deployment/api") == 0
        assert await client.get(f"{redis_prefix}lock:redis/cache") == b"someone-else"
    finally:
        await client.aclose()


async def test_redis_lock_of_a_crashed_holder_expires(redis_url: str, redis_prefix: str) -> None:
    client = aioredis.from_url(redis_url)
    locks = RedisLocks(client, redis_prefix, ttl=0.3, timeout=2)
    try:
        assert await client.set(f"{redis_prefix}lock:postgres/main", "crashed", nx=True, px=300)
        async with locks.hold("postgres/main") as held:
            assert held is False
        await asyncio.sleep(0.4)
        async with locks.hold("postgres/main") as held:
            assert held is True
    finally:
        await client.aclose()


async def test_unreachable_redis_fails_closed() -> None:
    client = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    locks = RedisLocks(client, "x:", ttl=5, timeout=1)
    try:
        with pytest.raises(LockUnavailable):
            async with locks.hold("http/app/admin"):
                pytest.fail("entered the block without a lock")
    finally:
        await client.aclose()


async def test_local_locks_have_one_holder() -> None:
    locks = LocalLocks()
    async with locks.hold("a") as first, locks.hold("a") as second, locks.hold("b") as other:
        assert (first, second, other) == (True, False, True)
    async with locks.hold("a") as again:
        assert again is True
