"""PostgreSQL collectors: the catalog queries an on-call engineer runs in psql (pg_stat_activity,
pg_blocking_pids, pg_stat_statements, pg_stat_replication, pg_stat_database, sizes).

Each run opens one short-lived connection, named so the responder's own actions never touch it, with
the target's `statement_timeout`, and closes it in all cases. Every filter is a query parameter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from responder.collectors.base import Collector, CollectorContext, Finding, registry
from responder.collectors.common import TargetParams, human_seconds, table
from responder.config import Duration, PostgresTarget
from responder.evidence import EvidenceStatus

if TYPE_CHECKING:
    import asyncpg

APPLICATION_NAME = "alert-responder collector"
CONNECT_TIMEOUT = 5.0
QUERY_CHARS = 1000


@asynccontextmanager
async def connect(ctx: CollectorContext, target: str) -> AsyncIterator[asyncpg.Connection]:
    import asyncpg

    spec: PostgresTarget = ctx.targets.spec("postgres", target)
    conn = await asyncpg.connect(
        ctx.targets.postgres_dsn(target), timeout=min(CONNECT_TIMEOUT, spec.statement_timeout + 1),
        command_timeout=spec.statement_timeout + 1, statement_cache_size=0,
        server_settings={"application_name": APPLICATION_NAME,
                         "statement_timeout": str(int(spec.statement_timeout * 1000)),
                         "default_transaction_read_only": "on"})
    try:
        yield conn
    finally:
        await conn.close(timeout=2)


def records(rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
    return [dict(r) for r in rows]


# Sessions other than this collector's own connection; the responder's other sessions are shown.
_OTHERS = "pid <> pg_backend_pid() AND backend_type = 'client backend'"


class ConnectivityParams(TargetParams):
    pass


@registry.register
class Connectivity(Collector[ConnectivityParams]):
    """Can we connect at all, and how long does a round trip take (`psql -c 'select 1'`)."""

    name = "postgres.connectivity"
    params_model = ConnectivityParams

    async def collect(self, params: ConnectivityParams, ctx: CollectorContext) -> Finding:
        import asyncpg

        started = time.monotonic()
        try:
            async with connect(ctx, params.target) as conn:
                connected = time.monotonic()
                await conn.fetchval("SELECT 1")
                round_trip = time.monotonic() - connected
                info = await conn.fetchrow("SELECT version() AS version, pg_is_in_recovery() AS standby, "
                                           "current_database() AS database")
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            elapsed = round((time.monotonic() - started) * 1000, 1)
            return Finding(f"postgres {params.target} unreachable", {
                "reachable": False, "error": type(exc).__name__, "elapsed_ms": elapsed},
                f"{type(exc).__name__}: {exc}", EvidenceStatus.ERROR)
        payload = {"reachable": True, "connect_ms": round((connected - started) * 1000, 1),
                   "round_trip_ms": round(round_trip * 1000, 2), "standby": info["standby"],
                   "database": info["database"], "version": info["version"]}
        return Finding(f"postgres {params.target} reachable: connect {payload['connect_ms']:g} ms, "
                       f"round trip {payload['round_trip_ms']:g} ms", payload,
                       f"{info['version']}\nrole: {'standby' if info['standby'] else 'primary'}")


class ConnectionsParams(TargetParams):
    top: int = Field(default=10, ge=1, le=100)


@registry.register
class Connections(Collector[ConnectionsParams]):
    """Connections by state, database and application against max_connections."""

    name = "postgres.connections"
    params_model = ConnectionsParams

    async def collect(self, params: ConnectionsParams, ctx: CollectorContext) -> Finding:
        async with connect(ctx, params.target) as conn:
            limits = await conn.fetchrow(
                "SELECT current_setting('max_connections')::int AS max_connections, "
                "current_setting('superuser_reserved_connections')::int AS reserved, "
                "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int AS total")
            states = await conn.fetch("SELECT coalesce(state, 'unknown') AS state, count(*)::int AS count "
                                      "FROM pg_stat_activity WHERE backend_type = 'client backend' "
                                      "GROUP BY 1 ORDER BY 2 DESC")
            groups = await conn.fetch(
                "SELECT datname AS database, usename AS user, application_name, coalesce(state, 'unknown') AS state,"
                " count(*)::int AS count FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC LIMIT $1", params.top)
        by_state = {r["state"]: r["count"] for r in states}
        total, maximum = limits["total"], limits["max_connections"]
        payload = {"total": total, "max_connections": maximum, "reserved": limits["reserved"],
                   "used_percent": round(100 * total / maximum, 1) if maximum else None,
                   "active_count": by_state.get("active", 0), "idle_count": by_state.get("idle", 0),
                   "idle_in_transaction_count": by_state.get("idle in transaction", 0)
                   + by_state.get("idle in transaction (aborted)", 0),
                   "by_state": by_state, "groups": records(groups)}
        return Finding(f"{total}/{maximum} connections ({payload['used_percent']}%), "
                       f"{payload['active_count']} active, {payload['idle_in_transaction_count']} idle in transaction",
                       payload, table(payload["groups"], ["count", "state", "database", "user", "application_name"]))


class LongQueriesParams(TargetParams):
    min_duration: Duration = Field(default=60.0, ge=0)
    limit: int = Field(default=20, ge=1, le=200)


_ACTIVITY_COLUMNS = f"""pid, usename AS user, datname AS database, application_name, state,
    wait_event_type, wait_event, left(query, {QUERY_CHARS}) AS query"""


@registry.register
class LongQueries(Collector[LongQueriesParams]):
    """Statements running longer than `min_duration`, oldest first."""

    name = "postgres.long_queries"
    params_model = LongQueriesParams

    async def collect(self, params: LongQueriesParams, ctx: CollectorContext) -> Finding:
        async with connect(ctx, params.target) as conn:
            rows = records(await conn.fetch(
                f"SELECT {_ACTIVITY_COLUMNS}, round(extract(epoch FROM now() - query_start)::numeric, 1)::float8 "
                f"AS seconds FROM pg_stat_activity WHERE {_OTHERS} AND state = 'active' "
                "AND query_start < now() - make_interval(secs => $1) ORDER BY query_start LIMIT $2",
                params.min_duration, params.limit))
        longest: float = max((r["seconds"] for r in rows), default=0.0)
        payload = {"count": len(rows), "longest_seconds": longest,
                   "min_duration_seconds": params.min_duration, "queries": rows}
        shown = [{**r, "running": human_seconds(r["seconds"]), "query": _one_line(r["query"])} for r in rows]
        return Finding(f"{len(rows)} query(ies) running longer than {human_seconds(params.min_duration)}"
                       + (f", longest {human_seconds(longest)}" if rows else ""), payload,
                       table(shown, ["pid", "running", "user", "database", "wait_event", "query"],
                             empty="no long-running queries"))


class IdleInTransactionParams(TargetParams):
    min_duration: Duration = Field(default=30.0, ge=0)
    limit: int = Field(default=20, ge=1, le=200)


@registry.register
class IdleInTransaction(Collector[IdleInTransactionParams]):
    """Sessions holding a transaction open without doing anything (they hold locks and block vacuum)."""

    name = "postgres.idle_in_transaction"
    params_model = IdleInTransactionParams

    async def collect(self, params: IdleInTransactionParams, ctx: CollectorContext) -> Finding:
        async with connect(ctx, params.target) as conn:
            rows = records(await conn.fetch(
                f"SELECT {_ACTIVITY_COLUMNS}, "
                "round(extract(epoch FROM now() - state_change)::numeric, 1)::float8 AS idle_seconds, "
                "round(extract(epoch FROM now() - xact_start)::numeric, 1)::float8 AS transaction_seconds "
                f"FROM pg_stat_activity WHERE {_OTHERS} "
                "AND state IN ('idle in transaction', 'idle in transaction (aborted)') "
                "AND state_change < now() - make_interval(secs => $1) ORDER BY state_change LIMIT $2",
                params.min_duration, params.limit))
        payload = {"idle_in_transaction_count": len(rows),
                   "oldest_idle_seconds": max((r["idle_seconds"] for r in rows), default=0.0), "sessions": rows}
        shown = [{**r, "idle": human_seconds(r["idle_seconds"]), "last_query": _one_line(r["query"])} for r in rows]
        return Finding(f"{len(rows)} session(s) idle in transaction for over {human_seconds(params.min_duration)}",
                       payload, table(shown, ["pid", "idle", "user", "database", "application_name", "last_query"],
                                      empty="no sessions idle in transaction"))


class BlockingParams(TargetParams):
    limit: int = Field(default=50, ge=1, le=500)


@registry.register
class Blocking(Collector[BlockingParams]):
    """Who blocks whom (pg_blocking_pids), as chains from the root blockers down."""

    name = "postgres.blocking"
    params_model = BlockingParams

    async def collect(self, params: BlockingParams, ctx: CollectorContext) -> Finding:
        async with connect(ctx, params.target) as conn:
            rows = records(await conn.fetch(
                f"WITH blocked AS (SELECT pid, pg_blocking_pids(pid) AS blocked_by FROM pg_stat_activity "
                f"WHERE {_OTHERS} AND cardinality(pg_blocking_pids(pid)) > 0 LIMIT $1) "
                f"SELECT {_ACTIVITY_COLUMNS}, coalesce(b.blocked_by, '{{}}') AS blocked_by, "
                "round(extract(epoch FROM now() - coalesce(xact_start, query_start))::numeric, 1)::float8 AS seconds "
                "FROM pg_stat_activity a LEFT JOIN blocked b USING (pid) "
                "WHERE a.pid IN (SELECT pid FROM blocked) "
                "OR a.pid IN (SELECT unnest(blocked_by) FROM blocked)", params.limit))
        sessions = {r["pid"]: {**r, "blocked_by": list(r["blocked_by"])} for r in rows}
        children: dict[int, list[int]] = {}
        for pid, session in sessions.items():
            for blocker in session["blocked_by"]:
                children.setdefault(blocker, []).append(pid)
        roots = sorted(pid for pid in children if not sessions.get(pid, {}).get("blocked_by"))

        def below(pid: int, seen: frozenset[int]) -> list[int]:
            found = []
            for child in sorted(children.get(pid, [])):
                if child not in seen:
                    found += [child, *below(child, seen | {child})]
            return found

        chains, lines = [], []
        for root in roots:
            session = sessions.get(root, {"pid": root})
            blocked = below(root, frozenset({root}))
            chains.append({**session, "blocked_pids": blocked, "blocked_count": len(blocked)})
            lines += _tree(root, sessions, children, 0, frozenset())
        blocked_count = sum(bool(s["blocked_by"]) for s in sessions.values())
        payload = {"blocked_count": blocked_count, "root_blocker_count": len(roots),
                   "longest_chain": max((c["blocked_count"] for c in chains), default=0),
                   "root_blockers": chains, "sessions": list(sessions.values())}
        return Finding(f"{blocked_count} blocked session(s) behind {len(roots)} root blocker(s)", payload,
                       "\n".join(lines) or "no blocked sessions")


def _tree(pid: int, sessions: dict[int, dict[str, Any]], children: dict[int, list[int]], depth: int,
          seen: frozenset[int]) -> list[str]:
    session = sessions.get(pid, {})
    line = (f"{'  ' * depth}{'└─ ' if depth else ''}pid {pid} [{session.get('state', '?')}, "
            f"{human_seconds(session.get('seconds'))}, {session.get('user', '?')}] {_one_line(session.get('query'))}")
    lines = [line]
    for child in sorted(children.get(pid, [])):
        if child not in seen:
            lines += _tree(child, sessions, children, depth + 1, seen | {pid})
    return lines


def _one_line(query: str | None, width: int = 120) -> str:
    text = " ".join((query or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


class TopStatementsParams(TargetParams):
    order_by: Literal["total_time", "mean_time", "calls"] = "total_time"
    limit: int = Field(default=10, ge=1, le=100)


_ORDER = {"total_time": "total_exec_time", "mean_time": "mean_exec_time", "calls": "calls"}


@registry.register
class TopStatements(Collector[TopStatementsParams]):
    """The most expensive statements from pg_stat_statements; `skipped` where the extension is absent."""

    name = "postgres.top_statements"
    params_model = TopStatementsParams

    async def collect(self, params: TopStatementsParams, ctx: CollectorContext) -> Finding:
        import asyncpg

        async with connect(ctx, params.target) as conn:
            if not await conn.fetchval("SELECT true FROM pg_extension WHERE extname = 'pg_stat_statements'"):
                return Finding("pg_stat_statements is not installed", {"reason": "extension absent"},
                               "CREATE EXTENSION pg_stat_statements (and preload it) to see top statements",
                               EvidenceStatus.SKIPPED)
            try:
                rows = records(await conn.fetch(
                    f"SELECT left(query, {QUERY_CHARS}) AS query, calls, rows, "
                    "round(total_exec_time::numeric, 1)::float8 AS total_ms, "
                    "round(mean_exec_time::numeric, 2)::float8 AS mean_ms FROM pg_stat_statements "
                    f"ORDER BY {_ORDER[params.order_by]} DESC LIMIT $1", params.limit))
            except asyncpg.ObjectNotInPrerequisiteStateError as exc:
                return Finding("pg_stat_statements is not loaded", {"reason": "not in shared_preload_libraries"},
                               str(exc), EvidenceStatus.SKIPPED)
        payload = {"order_by": params.order_by, "statements": rows}
        shown = [{**r, "query": _one_line(r["query"], 100)} for r in rows]
        return Finding(f"top {len(rows)} statement(s) by {params.order_by}", payload,
                       table(shown, ["calls", "total_ms", "mean_ms", "rows", "query"]))


class DatabaseSizeParams(TargetParams):
    # Also list the largest tables of the connected database.
    top_tables: int = Field(default=5, ge=0, le=100)


@registry.register
class DatabaseSize(Collector[DatabaseSizeParams]):
    """Size of every database, and the largest tables of the connected one (`\\l+`, `\\dt+`)."""

    name = "postgres.database_size"
    params_model = DatabaseSizeParams

    async def collect(self, params: DatabaseSizeParams, ctx: CollectorContext) -> Finding:
        async with connect(ctx, params.target) as conn:
            databases = records(await conn.fetch(
                "SELECT datname AS database, pg_database_size(datname) AS bytes FROM pg_database "
                "WHERE datallowconn AND has_database_privilege(datname, 'CONNECT') ORDER BY 2 DESC"))
            current = await conn.fetchval("SELECT current_database()")
            tables = records(await conn.fetch(
                "SELECT n.nspname || '.' || c.relname AS table, pg_total_relation_size(c.oid) AS bytes "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm', 'p') "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 2 DESC LIMIT $1",
                params.top_tables)) if params.top_tables else []
        payload = {"database": current, "database_bytes": next((d["bytes"] for d in databases
                                                                if d["database"] == current), None),
                   "databases": databases, "tables": tables}
        rows = [{"name": d["database"], "size": _size(d["bytes"])} for d in databases]
        rows += [{"name": t["table"], "size": _size(t["bytes"])} for t in tables]
        return Finding(f"database {current}: {_size(payload['database_bytes'])}", payload,
                       table(rows, ["name", "size"]))


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


class ReplicationParams(TargetParams):
    pass


@registry.register
class Replication(Collector[ReplicationParams]):
    """Replication lag: per replica on a primary (pg_stat_replication), replay delay on a standby."""

    name = "postgres.replication"
    params_model = ReplicationParams

    async def collect(self, params: ReplicationParams, ctx: CollectorContext) -> Finding:
        async with connect(ctx, params.target) as conn:
            standby = await conn.fetchval("SELECT pg_is_in_recovery()")
            if standby:
                delay = await conn.fetchval(
                    "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8")
                payload = {"role": "standby", "replay_delay_seconds": delay,
                           "max_lag_seconds": delay, "replicas": []}
                return Finding(f"standby, last replayed transaction {human_seconds(delay)} ago", payload,
                               "this server is a standby")
            replicas = records(await conn.fetch(
                "SELECT application_name, client_addr::text AS client, state, sync_state, "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS lag_bytes, "
                "extract(epoch FROM replay_lag)::float8 AS lag_seconds FROM pg_stat_replication"))
            slots = records(await conn.fetch(
                "SELECT slot_name, active, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint "
                "AS retained_bytes FROM pg_replication_slots"))
        payload = {"role": "primary", "replica_count": len(replicas),
                   "max_lag_bytes": max((r["lag_bytes"] or 0 for r in replicas), default=0),
                   "max_lag_seconds": max((r["lag_seconds"] or 0.0 for r in replicas), default=0.0),
                   "inactive_slot_count": sum(not s["active"] for s in slots), "replicas": replicas, "slots": slots}
        return Finding(f"primary with {len(replicas)} replica(s), max lag {payload['max_lag_seconds']:g}s",
                       payload, table(replicas, ["application_name", "client", "state", "sync_state", "lag_bytes",
                                                 "lag_seconds"], empty="no replicas connected"))


class DeadlocksParams(TargetParams):
    # Read the counters twice this far apart and report the increase (0: report the totals only).
    sample: Duration = Field(default=0.0, ge=0, le=60)


@registry.register
class Deadlocks(Collector[DeadlocksParams]):
    """Deadlock, conflict and rollback counters of the connected database (pg_stat_database)."""

    name = "postgres.deadlocks"
    params_model = DeadlocksParams

    async def collect(self, params: DeadlocksParams, ctx: CollectorContext) -> Finding:
        query = ("SELECT datname AS database, deadlocks, conflicts, xact_rollback AS rollbacks, "
                 "xact_commit AS commits, stats_reset FROM pg_stat_database WHERE datname = current_database()")
        async with connect(ctx, params.target) as conn:
            first = await conn.fetchrow(query)
            last = first
            if params.sample:
                await asyncio.sleep(params.sample)
                await conn.execute("SELECT pg_stat_clear_snapshot()")
                last = await conn.fetchrow(query)
        payload: dict[str, Any] = {k: last[k] for k in ("database", "deadlocks", "conflicts", "rollbacks", "commits")}
        payload["stats_reset"] = last["stats_reset"].isoformat() if last["stats_reset"] else None
        if params.sample:
            payload.update(sample_seconds=params.sample, deadlocks_delta=last["deadlocks"] - first["deadlocks"],
                           rollbacks_delta=last["rollbacks"] - first["rollbacks"])
        change = f", +{payload['deadlocks_delta']} in {params.sample:g}s" if params.sample else ""
        return Finding(f"{payload['deadlocks']} deadlock(s) in {payload['database']} since stats reset{change}",
                       payload, table([payload], ["database", "deadlocks", "conflicts", "rollbacks", "commits",
                                                  "stats_reset"]))
