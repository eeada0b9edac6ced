"""Redis collectors: `redis-cli ping`, `info`, `slowlog get`, `llen` of queues and a bounded SCAN count
(never KEYS, which blocks the server)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from responder.collectors.base import Collector, CollectorContext, Finding, registry
from responder.collectors.common import TargetParams, table
from responder.evidence import EvidenceStatus
from responder.params import RedisGlob

# A key name from a rule: printable, no whitespace, bounded.
RedisKey = Annotated[str, StringConstraints(pattern=r"^[!-~]{1,256}$")]


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


class PingParams(TargetParams):
    count: int = Field(default=3, ge=1, le=20)


@registry.register
class Ping(Collector[PingParams]):
    """`redis-cli --latency`, briefly: a few PINGs and their round-trip times."""

    name = "redis.ping"
    params_model = PingParams

    async def collect(self, params: PingParams, ctx: CollectorContext) -> Finding:
        import redis.asyncio as aioredis

        client = await ctx.targets.redis(params.target)
        timings = []
        try:
            for _ in range(params.count):
                started = time.monotonic()
                await client.ping()
                timings.append((time.monotonic() - started) * 1000)
        except (OSError, aioredis.RedisError) as exc:
            return Finding(f"redis {params.target} unreachable", {"reachable": False, "error": type(exc).__name__},
                           f"{type(exc).__name__}: {exc}", EvidenceStatus.ERROR)
        payload = {"reachable": True, "pings": len(timings), "min_ms": round(min(timings), 2),
                   "avg_ms": round(sum(timings) / len(timings), 2), "max_ms": round(max(timings), 2)}
        return Finding(f"redis {params.target} answers PING in {payload['avg_ms']:g} ms (max {payload['max_ms']:g})",
                       payload, f"{len(timings)} PING(s): min {payload['min_ms']:g} ms, avg {payload['avg_ms']:g} ms, "
                                f"max {payload['max_ms']:g} ms")


class InfoParams(TargetParams):
    pass


@registry.register
class Info(Collector[InfoParams]):
    """`redis-cli info memory|stats|clients` with the facts people derive from them."""

    name = "redis.info"
    params_model = InfoParams

    async def collect(self, params: InfoParams, ctx: CollectorContext) -> Finding:
        client = await ctx.targets.redis(params.target)
        info: dict[str, Any] = {}
        for section in ("server", "clients", "memory", "stats", "keyspace"):
            info.update(await client.info(section))
        hits, misses = int(info.get("keyspace_hits", 0)), int(info.get("keyspace_misses", 0))
        used, maximum = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
        payload = {
            "version": _text(info.get("redis_version", "")),
            "uptime_seconds": int(info.get("uptime_in_seconds", 0)),
            "connected_clients": int(info.get("connected_clients", 0)),
            "blocked_clients": int(info.get("blocked_clients", 0)),
            "used_memory_bytes": used,
            "maxmemory_bytes": maximum,
            "memory_used_percent": round(100 * used / maximum, 1) if maximum else None,
            "maxmemory_policy": _text(info.get("maxmemory_policy", "")),
            "fragmentation_ratio": info.get("mem_fragmentation_ratio"),
            "keyspace_hits": hits,
            "keyspace_misses": misses,
            "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
            "evicted_keys": int(info.get("evicted_keys", 0)),
            "expired_keys": int(info.get("expired_keys", 0)),
            "rejected_connections": int(info.get("rejected_connections", 0)),
            "ops_per_sec": int(info.get("instantaneous_ops_per_sec", 0)),
            "keys": sum(int(v.get("keys", 0)) for k, v in info.items() if k.startswith("db") and isinstance(v, dict)),
        }
        limit = f"{maximum / 2**20:.0f} MiB" if maximum else "no limit"
        ratio = f"{payload['hit_ratio']:.1%}" if payload["hit_ratio"] is not None else "n/a"
        lines = [f"{k}: {v}" for k, v in payload.items()]
        return Finding(f"redis {params.target}: {used / 2**20:.1f} MiB used ({limit}), hit ratio {ratio}, "
                       f"{payload['evicted_keys']} evicted, {payload['connected_clients']} client(s)",
                       payload, "\n".join(lines))


class SlowlogParams(TargetParams):
    count: int = Field(default=10, ge=1, le=128)


@registry.register
class Slowlog(Collector[SlowlogParams]):
    """`redis-cli slowlog get N`: the slowest recent commands (arguments are redacted like any evidence)."""

    name = "redis.slowlog"
    params_model = SlowlogParams

    async def collect(self, params: SlowlogParams, ctx: CollectorContext) -> Finding:
        client = await ctx.targets.redis(params.target)
        total = int(await client.slowlog_len())
        entries = [{
            "id": e["id"], "start": e["start_time"], "duration_us": e["duration"],
            "command": _text(e["command"])[:300], "client": _text(e.get("client_address", b"")),
        } for e in await client.slowlog_get(params.count)]
        payload = {"slowlog_length": total, "max_duration_us": max((e["duration_us"] for e in entries), default=0),
                   "entries": entries}
        return Finding(f"{total} slow command(s) logged, slowest shown {payload['max_duration_us']} µs", payload,
                       table(entries, ["id", "start", "duration_us", "client", "command"], empty="slowlog is empty"))


class QueuesParams(TargetParams):
    # List keys to measure, e.g. Celery queues: [celery, emails].
    keys: list[RedisKey] = Field(min_length=1, max_length=100)


@registry.register
class Queues(Collector[QueuesParams]):
    """`redis-cli llen <queue>` for each named queue (Celery, RQ and similar list-based queues)."""

    name = "redis.queues"
    params_model = QueuesParams

    async def collect(self, params: QueuesParams, ctx: CollectorContext) -> Finding:
        client = await ctx.targets.redis(params.target)
        async with client.pipeline(transaction=False) as pipe:
            for key in params.keys:
                pipe.type(key)
                pipe.llen(key)
            # LLEN of a non-list key is an error; keep it per key instead of failing the run.
            answers = await pipe.execute(raise_on_error=False)
        lengths: dict[str, int] = {}
        rows = []
        for key, kind, length in zip(params.keys, answers[::2], answers[1::2], strict=True):
            kind = _text(kind)
            size = length if isinstance(length, int) and kind in ("list", "none") else None
            if size is not None:
                lengths[key] = size
            rows.append({"queue": key, "type": kind, "length": size})
        payload = {"queue_lengths": lengths, "total": sum(lengths.values()),
                   "longest": max(lengths.values(), default=0), "queues": rows}
        return Finding(f"{payload['total']} item(s) queued across {len(params.keys)} queue(s), "
                       f"longest {payload['longest']}", payload, table(rows, ["queue", "type", "length"]))


class ScanCountParams(TargetParams):
    pattern: Annotated[RedisGlob, StringConstraints(pattern=r"^[!-~]{1,256}$")]
    # SCAN stops after this many keys: the count is then a lower bound (`complete: false`).
    max_keys: int = Field(default=10_000, ge=1, le=1_000_000)
    sample: int = Field(default=5, ge=0, le=50)


@registry.register
class ScanCount(Collector[ScanCountParams]):
    """How many keys match a pattern, counted with SCAN in batches and bounded (never KEYS)."""

    name = "redis.scan_count"
    params_model = ScanCountParams

    async def collect(self, params: ScanCountParams, ctx: CollectorContext) -> Finding:
        client = await ctx.targets.redis(params.target)
        count, complete = 0, True
        sample: list[str] = []
        async for key in client.scan_iter(match=params.pattern, count=1000):
            if count >= params.max_keys:
                complete = False
                break
            count += 1
            if len(sample) < params.sample:
                sample.append(_text(key))
        payload = {"pattern": params.pattern, "count": count, "complete": complete, "sample": sorted(sample)}
        bound = "" if complete else f" (stopped at max_keys={params.max_keys}; at least this many)"
        return Finding(f"{count} key(s) match {params.pattern!r}{bound}", payload,
                       "\n".join([f"{count} key(s) match {params.pattern!r}{bound}", *sample]))
