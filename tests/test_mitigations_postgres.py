"""PostgreSQL actions against the real server: exactly the sessions matching the filters are
terminated, oldest first and never more than the cap; other users', superusers' and the responder's own
sessions survive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from responder.config import load_config
from responder.mitigations.base import ActionContext
from responder.mitigations.postgres import CancelRunaway, IdleParams, RunawayParams, TerminateIdle
from responder.models import Incident, IncidentStatus
from responder.targets import Targets
from tests.support.services import PG_BASE, require, unique


@pytest.fixture
async def roles() -> AsyncIterator[tuple[str, str]]:
    """Two ordinary (non-superuser) login roles of the test's own, dropped afterwards."""
    try:
        admin = await asyncpg.connect(PG_BASE, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        require("PostgreSQL", str(exc))
    app, other = unique("rt_app"), unique("rt_other")
    for role in (app, other):
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        yield app, other
    finally:
        for role in (app, other):
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
        await asyncio.sleep(0.2)
        for role in (app, other):
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


@pytest.fixture
def ctx(monkeypatch: pytest.MonkeyPatch) -> ActionContext:
    monkeypatch.setenv("TARGET_PG_DSN", PG_BASE)
    config = load_config(None, {"targets": {"postgres": {"db": {"dsn": {"env": "TARGET_PG_DSN"}}}}})
    incident = Incident(1, "test", "fp", "DbConnections", IncidentStatus.OPEN, 0, 0, 0, 1, {}, {}, 1)
    return ActionContext(incident, Targets(config))


async def session(user: str, application: str, *, in_transaction: bool = False) -> asyncpg.Connection:
    conn = await asyncpg.connect(PG_BASE, user=user, timeout=5, server_settings={"application_name": application})
    if in_transaction:
        await conn.execute("BEGIN; SELECT 1")
    return conn


async def alive(pids: dict[str, int]) -> set[str]:
    admin = await asyncpg.connect(PG_BASE, timeout=5)
    try:
        await asyncio.sleep(0.2)  # termination is asynchronous; give the backends a moment to exit
        rows = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[])", list(pids.values()))
    finally:
        await admin.close()
    running = {r["pid"] for r in rows}
    return {name for name, pid in pids.items() if pid in running}


async def test_terminate_idle_touches_only_matching_sessions_within_the_cap(
        roles: tuple[str, str], ctx: ActionContext) -> None:
    app, other = roles
    conns: dict[str, Any] = {
        "batch-1": await session(app, "batch-worker"),
        "batch-2": await session(app, "batch-worker", in_transaction=True),
        "batch-3": await session(app, "batch-worker"),
        "web": await session(app, "web"),
        "responder": await session(app, "alert-responder"),
        "other-user": await session(other, "batch-worker"),
        "superuser": await session("postgres", "batch-worker"),
    }
    pids = {name: c.get_server_pid() for name, c in conns.items()}
    try:
        await asyncio.sleep(1.3)
        action = TerminateIdle()
        capped = IdleParams(target="db", user=app, application_name="batch-worker", idle_for=1, max_sessions=2)
        first = await action.execute(capped, ctx)
        assert (first["touched"], first["cap_reached"]) == (2, True)
        assert await alive(pids) == {"batch-3", "web", "responder", "other-user", "superuser"}
        assert {s["state"] for s in first["sessions"]} == {"idle", "idle in transaction"}

        second = await action.execute(capped, ctx)
        assert (second["touched"], second["cap_reached"]) == (1, False)
        assert await alive(pids) == {"web", "responder", "other-user", "superuser"}

        # No user filter: the other user's session goes, the superuser's stays.
        by_app = IdleParams(target="db", application_name="batch-worker", idle_for=1, max_sessions=10)
        third = await action.execute(by_app, ctx)
        assert [s["user"] for s in third["sessions"]] == [other]
        assert await alive(pids) == {"web", "responder", "superuser"}

        # Every idle session of the user, except the responder's own.
        everything = IdleParams(target="db", user=app, idle_for=1, max_sessions=10)
        fourth = await action.execute(everything, ctx)
        assert [s["application_name"] for s in fourth["sessions"]] == ["web"]
        assert await alive(pids) == {"responder", "superuser"}

        # A session idle for less than the threshold is left alone.
        fresh = await session(app, "batch-worker")
        assert (await action.execute(capped, ctx))["touched"] == 0
        await fresh.close()
    finally:
        await ctx.targets.__aexit__(None, None, None)
        for conn in conns.values():
            conn.terminate()


async def test_cancel_runaway_cancels_long_queries_only(roles: tuple[str, str], ctx: ActionContext) -> None:
    app, _ = roles
    slow, quick = await session(app, "reports"), await session(app, "reports")
    try:
        long_query = asyncio.create_task(slow.execute("SELECT pg_sleep(30)"))
        await asyncio.sleep(1.5)
        short_query = asyncio.create_task(quick.execute("SELECT pg_sleep(2)"))
        await asyncio.sleep(0.2)
        result = await CancelRunaway().execute(RunawayParams(target="db", user=app, running_for=1), ctx)
        assert result["touched"] == 1 and result["sessions"][0]["pid"] == slow.get_server_pid()
        with pytest.raises(asyncpg.QueryCanceledError):
            await asyncio.wait_for(long_query, 5)
        await asyncio.wait_for(short_query, 5)  # finished normally
    finally:
        await ctx.targets.__aexit__(None, None, None)
        slow.terminate()
        quick.terminate()
