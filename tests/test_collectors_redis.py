"""Redis collectors against the real server (a filled queue, keys under the test's prefix, a hit/miss
history) and against a port where nothing listens."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from responder.collectors.redis import QueuesParams, ScanCountParams
from responder.config import Config
from responder.evidence import EvidenceStatus
from tests.support.collectors import collect, config_with
from tests.support.services import free_port


def redis_config(monkeypatch: pytest.MonkeyPatch, url: str) -> Config:
    monkeypatch.setenv("TEST_REDIS_URL", url)
    return config_with(**{"targets.redis": {"cache": {"url": {"env": "TEST_REDIS_URL"}}}})


async def test_queues_scan_info_slowlog_and_ping(monkeypatch: pytest.MonkeyPatch, redis_url: str,
                                                 redis_prefix: str) -> None:
    config = redis_config(monkeypatch, redis_url)
    client = aioredis.from_url(redis_url)
    try:
        await client.rpush(f"{redis_prefix}celery", *[f"task-{i}" for i in range(37)])
        await client.rpush(f"{redis_prefix}emails", "one", "two")
        await client.set(f"{redis_prefix}not-a-queue", "x")
        await client.mset({f"{redis_prefix}session:{i}": i for i in range(25)})
        before = await client.info("stats")
        for i in range(10):
            await client.get(f"{redis_prefix}session:{i}")
        for i in range(4):
            await client.get(f"{redis_prefix}missing:{i}")

        queues = await collect(config, "redis.queues", target="cache", keys=[
            f"{redis_prefix}celery", f"{redis_prefix}emails", f"{redis_prefix}absent", f"{redis_prefix}not-a-queue"])
        scan = await collect(config, "redis.scan_count", target="cache", pattern=f"{redis_prefix}session:*", sample=3)
        bounded = await collect(config, "redis.scan_count", target="cache", pattern=f"{redis_prefix}session:*",
                                max_keys=10)
        info = await collect(config, "redis.info", target="cache")
        slowlog = await collect(config, "redis.slowlog", target="cache", count=5)
        ping = await collect(config, "redis.ping", target="cache", count=3)
    finally:
        await client.aclose()

    assert queues.payload["queue_lengths"] == {f"{redis_prefix}celery": 37, f"{redis_prefix}emails": 2,
                                               f"{redis_prefix}absent": 0}
    assert queues.payload["longest"] == 37 and queues.payload["total"] == 39
    wrong = next(q for q in queues.payload["queues"] if q["queue"].endswith("not-a-queue"))
    assert wrong == {"queue": f"{redis_prefix}not-a-queue", "type": "string", "length": None}

    assert scan.payload["count"] == 25 and scan.payload["complete"] is True and len(scan.payload["sample"]) == 3
    assert bounded.payload["count"] == 10 and bounded.payload["complete"] is False

    # The server's counters are shared with other clients: the history we made is a lower bound.
    assert info.payload["keyspace_hits"] - int(before["keyspace_hits"]) >= 10
    assert info.payload["keyspace_misses"] - int(before["keyspace_misses"]) >= 4
    hits, misses = info.payload["keyspace_hits"], info.payload["keyspace_misses"]
    assert info.payload["hit_ratio"] == round(hits / (hits + misses), 4)
    assert info.payload["connected_clients"] >= 1 and info.payload["used_memory_bytes"] > 0
    assert isinstance(info.payload["evicted_keys"], int) and "hit ratio" in info.title

    assert slowlog.status is EvidenceStatus.OK and isinstance(slowlog.payload["slowlog_length"], int)
    assert ping.payload["reachable"] is True and ping.payload["pings"] == 3 and ping.payload["max_ms"] < 1000


async def test_closed_port_is_error_evidence(monkeypatch: pytest.MonkeyPatch) -> None:
    config = redis_config(monkeypatch, f"redis://:s3cretpass@127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    ping = await collect(config, "redis.ping", target="cache")
    queues = await collect(config, "redis.queues", target="cache", keys=["celery"])
    assert time.monotonic() - started < 5
    assert ping.status is EvidenceStatus.ERROR and ping.payload["reachable"] is False
    assert queues.status is EvidenceStatus.ERROR and "ConnectionError" in queues.text
    assert "s3cretpass" not in repr(ping.as_dict()) + repr(queues.as_dict())


def test_scan_pattern_and_queue_names_are_validated() -> None:
    with pytest.raises(ValueError):
        ScanCountParams(pattern="a b*")
    with pytest.raises(ValueError):
        QueuesParams(keys=["celery\nFLUSHALL"])
    with pytest.raises(ValueError):
        QueuesParams(keys=[])
