"""PostgreSQL collectors against the real server, in situations the tests create: a blocking chain, a
long pg_sleep query, a session idle in transaction, and a port where nothing listens."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from responder.config import Config
from responder.evidence import EvidenceStatus
from tests.support.collectors import collect, config_with
from tests.support.services import PG_BASE, free_port


def pg_config(monkeypatch: pytest.MonkeyPatch, dsn: str = PG_BASE, statement_timeout: float = 5.0) -> Config:
    monkeypatch.setenv("TEST_PG_DSN", dsn)
    return config_with(**{"targets.postgres": {"db": {"dsn": {"env": "TEST_PG_DSN"},
                                                      "statement_timeout": statement_timeout}}})


@pytest.fixture
async def table(pg_url: str) -> AsyncIterator[str]:
    """A one-row table in the test's own schema."""
    schema = pg_url.rsplit("schema=", 1)[1]
    conn = await asyncpg.connect(PG_BASE)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"; CREATE TABLE "{schema}".jobs (id int PRIMARY KEY, n int);'
                           f'INSERT INTO "{schema}".jobs VALUES (1, 0)')
    finally:
        await conn.close()
    yield f'"{schema}".jobs'


@contextlib.asynccontextmanager
async def session(name: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(PG_BASE, server_settings={"application_name": name})
    try:
        yield conn
    finally:
        await conn.close(timeout=2)


async def wait_until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_blocking_chain_and_idle_in_transaction(monkeypatch: pytest.MonkeyPatch, table: str) -> None:
    config = pg_config(monkeypatch)
    async with session("holder") as holder, session("waiter") as waiter, session("observer") as observer:
        holder_pid, waiter_pid = await holder.fetchval("SELECT pg_backend_pid()"), await waiter.fetchval(
            "SELECT pg_backend_pid()")
        tx = holder.transaction()
        await tx.start()
        await holder.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")
        blocked = asyncio.create_task(waiter.execute(f"UPDATE {table} SET n = n + 10 WHERE id = 1"))

        async def waiting() -> bool:
            return bool(await observer.fetchval("SELECT cardinality(pg_blocking_pids($1)) > 0", waiter_pid))

        await wait_until(waiting)
        await asyncio.sleep(0.3)

        chain = await collect(config, "postgres.blocking", target="db")
        idle = await collect(config, "postgres.idle_in_transaction", target="db", min_duration=0.2)
        connections = await collect(config, "postgres.connections", target="db")
        await tx.rollback()
        await asyncio.wait_for(blocked, 5)

    assert chain.status is EvidenceStatus.OK, chain.text
    root = next(r for r in chain.payload["root_blockers"] if r["pid"] == holder_pid)
    assert waiter_pid in root["blocked_pids"] and root["state"] == "idle in transaction"
    assert "UPDATE" in root["query"] and chain.payload["blocked_count"] >= 1
    assert f"pid {holder_pid}" in chain.text and f"└─ pid {waiter_pid}" in chain.text

    assert idle.status is EvidenceStatus.OK
    mine = [s for s in idle.payload["sessions"] if s["pid"] == holder_pid]
    assert mine and mine[0]["idle_seconds"] >= 0.2 and mine[0]["application_name"] == "holder"
    assert idle.payload["idle_in_transaction_count"] >= 1

    assert connections.payload["max_connections"] > 0 and connections.payload["total"] >= 3
    assert connections.payload["idle_in_transaction_count"] >= 1 and connections.payload["active_count"] >= 1


async def test_long_query_is_found_and_short_ones_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    config = pg_config(monkeypatch)
    async with session("sleeper") as sleeper:
        pid = await sleeper.fetchval("SELECT pg_backend_pid()")
        running = asyncio.create_task(sleeper.execute("SELECT pg_sleep(20) /* nightly report */"))
        try:
            await asyncio.sleep(1.0)
            found = await collect(config, "postgres.long_queries", target="db", min_duration=0.5)
            strict = await collect(config, "postgres.long_queries", target="db", min_duration=60)
        finally:
            sleeper.terminate()
            with contextlib.suppress(Exception):
                await running
    query = next(q for q in found.payload["queries"] if q["pid"] == pid)
    assert query["seconds"] >= 0.9 and "pg_sleep(20)" in query["query"] and query["user"] == "postgres"
    assert found.payload["longest_seconds"] >= 0.9 and "nightly report" in found.text
    assert all(q["pid"] != pid for q in strict.payload["queries"])


async def test_unreachable_database_is_error_evidence_within_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    config = pg_config(monkeypatch, f"postgresql://postgres:hunter2secret@127.0.0.1:{free_port()}/test",
                       statement_timeout=2)
    started = time.monotonic()
    reach = await collect(config, "postgres.connectivity", target="db")
    sizes = await collect(config, "postgres.database_size", target="db")
    assert time.monotonic() - started < 5
    assert reach.status is EvidenceStatus.ERROR and reach.payload["reachable"] is False
    assert sizes.status is EvidenceStatus.ERROR
    assert "hunter2secret" not in repr(reach.as_dict()) + repr(sizes.as_dict())


async def test_health_overview_of_a_reachable_server(monkeypatch: pytest.MonkeyPatch) -> None:
    config = pg_config(monkeypatch)
    reach = await collect(config, "postgres.connectivity", target="db")
    assert reach.status is EvidenceStatus.OK and reach.payload["reachable"] is True
    assert 0 < reach.payload["round_trip_ms"] < 1000 and "PostgreSQL" in reach.payload["version"]

    sizes = await collect(config, "postgres.database_size", target="db", top_tables=3)
    assert sizes.payload["database"] == "test" and sizes.payload["database_bytes"] > 1_000_000

    replication = await collect(config, "postgres.replication", target="db")
    assert replication.payload["role"] == "primary" and replication.payload["replica_count"] == 0

    deadlocks = await collect(config, "postgres.deadlocks", target="db", sample=0.2)
    assert deadlocks.payload["database"] == "test" and deadlocks.payload["deadlocks_delta"] >= 0
    assert isinstance(deadlocks.payload["deadlocks"], int)

    top = await collect(config, "postgres.top_statements", target="db")
    assert top.status is EvidenceStatus.SKIPPED and "pg_stat_statements" in top.title


async def test_statement_timeout_bounds_every_query(monkeypatch: pytest.MonkeyPatch, table: str) -> None:
    """A catalog query stuck behind a lock ends at the target's statement_timeout, not the collector's."""
    config = pg_config(monkeypatch, statement_timeout=0.5)
    async with session("locker") as locker:
        tx = locker.transaction()
        await tx.start()
        await locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        sizes = await collect(config, "postgres.database_size", target="db", top_tables=50)
        elapsed = time.monotonic() - started
        await tx.rollback()
    assert sizes.status is EvidenceStatus.ERROR and "QueryCanceled" in sizes.text, sizes.text
    assert elapsed < 3
