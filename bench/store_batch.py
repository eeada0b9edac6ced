"""The intake's store alone: `record_batch` (what one group commit writes) without HTTP, on SQLite and on
PostgreSQL, one batch after another on one connection, so its cost is not hidden by a busy machine.

    .venv/bin/python bench/store_batch.py [--targets sqlite,postgres] [--workload storm,distinct]
        [--batch 32] [--batches 300] [--groups 100] [--alerts 1] [--vary] [--tasks]

Each batch holds `--batch` deliveries (with `--vary`, 1 to `--batch` of them, drawn at random, as a group
commit's batches come in the daemon) of `--alerts` new firing alerts each; storm puts every delivery in one
of `--groups` groups (after the first batches most join an open incident), distinct gives each its own.
Prints, per target and workload: this process's CPU µs per delivery (building rows, encoding and decoding,
the driver), on SQLite the part of it spent on the database's own thread (where a batch holds the write lock:
its statements, its COMMIT and any Python code run there), the database server's CPU µs per delivery
(PostgreSQL's backend, from /proc), statements and round trips per batch (PostgreSQL: each statement plus
BEGIN and COMMIT; SQLite runs a batch in one call to its thread), and wall ms per batch (mean, p99 and max).
`--tasks` runs the database's own tasks meanwhile, as the daemon does (SQLite's WAL checkpointer). Writes
bench/results/NAME.json (NAME from --name, default store_batch).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_seconds, print_table, write_result
from bench.ingest import PG
from responder.models import Alert, AlertStatus, Delivery, SourceGrouping
from responder.store import db as db_module
from responder.store.db import open_database
from responder.store.intake_writer import Placed, record_batch
from responder.store.migrations import migrate

STATEMENTS: collections.Counter[str] = collections.Counter()


def counted(name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def wrapper(self: Any, *args: Any) -> Any:
        STATEMENTS[name] += 1
        return await method(self, *args)

    return wrapper


def count_statements() -> None:
    """On SQLite every statement of a batch goes through the connection's fetch or execute on its thread; on
    PostgreSQL every round trip (BEGIN and COMMIT too) is one call of one of asyncpg's methods."""
    import asyncpg

    for method in ("fetch", "execute"):
        cls = db_module._SqliteOnItsThread
        setattr(cls, method, counted("sqlite", getattr(cls, method)))
    for method in ("fetch", "fetchrow", "fetchval", "execute", "executemany"):
        setattr(asyncpg.Connection, method, counted("postgres", getattr(asyncpg.Connection, method)))


def delivery(workload: str, groups: int, alerts: int, n: int) -> Placed:
    group = f"g{n % groups}" if workload == "storm" else f"g{uuid.uuid4().hex}"
    items = [Alert("alertmanager", AlertStatus.FIRING, f"{uuid.uuid4().hex}", 1_795_000_000.0,
                   {"alertname": f"Bench-{group}", "severity": "warning", "namespace": "bench", "pod": f"pod-{n}-{i}"},
                   {"summary": f"benchmark alert {n}-{i}"}, generator_url="http://prometheus/graph",
                   group_key=f'{{}}:{{alertname="Bench-{group}"}}')
             for i in range(alerts)]
    placements = [SourceGrouping().place(a) for a in items]
    return Placed(Delivery("alertmanager", b"{}" * 200, items), placements)


def writer_clock(db: Any) -> int | None:
    """The CPU clock of SQLite's thread (aiosqlite's, private: `_thread`), where a batch runs."""
    if db.dialect != "sqlite":
        return None
    return time.pthread_getcpuclockid(db._conn._thread.ident)


async def backend_pid(db: Any) -> int | None:
    if db.dialect != "postgres":
        return None
    async with db.read() as conn:
        return int(await conn.fetchval("SELECT pg_backend_pid()"))


async def measure(target: str, workload: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    schema = None
    if target == "sqlite":
        url = f"sqlite:///{workdir / f'{uuid.uuid4().hex}.db'}"
    else:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        url = f"{PG}?schema={schema}"
    db = await open_database(url, pool_size=1)
    try:
        await migrate(db)
        pid = await backend_pid(db)
        clock = writer_clock(db)
        sizes = random.Random(1).choices(range(1, args.batch + 1), k=args.batches) if args.vary \
            else [args.batch] * args.batches
        batches = [[delivery(workload, args.groups, args.alerts, b * args.batch + i) for i in range(size)]
                   for b, size in enumerate(sizes)]
        STATEMENTS.clear()
        cpu = time.process_time()
        server = cpu_seconds(pid) if pid else 0.0
        writer = time.clock_gettime(clock) if clock is not None else 0.0
        tasks = [asyncio.create_task(run()) for run in db.tasks().values()] if args.tasks else []
        walls = []
        wall = time.perf_counter()
        for batch in batches:
            began = time.perf_counter()
            await db.run_batch(functools.partial(record_batch, batch=batch, max_attempts=5))
            walls.append(time.perf_counter() - began)
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        server = (cpu_seconds(pid) - server) if pid else 0.0
        writer = (time.clock_gettime(clock) - writer) if clock is not None else 0.0
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if schema:
            async with db.transaction() as conn:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await db.close()
    deliveries = sum(sizes)
    statements = sum(STATEMENTS.values()) / args.batches
    return {"target": target, "workload": workload, "alerts_per_delivery": args.alerts,
            "cpu_us_per_delivery": round(1e6 * cpu / deliveries, 1),
            "writer_thread_cpu_us_per_delivery": round(1e6 * writer / deliveries, 1) if clock is not None else None,
            "server_cpu_us_per_delivery": round(1e6 * server / deliveries, 1) if pid else None,
            "statements_per_batch": round(statements - 2, 2) if target == "postgres" else round(statements, 2),
            "round_trips_per_batch": round(statements, 2) if target == "postgres" else 1,
            "wall_ms_per_batch": round(1000 * wall / args.batches, 2),
            "wall_ms_per_batch_p99": round(1000 * sorted(walls)[int(0.99 * len(walls))], 2),
            "wall_ms_per_batch_max": round(1000 * max(walls), 2)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="sqlite,postgres")
    parser.add_argument("--workload", default="storm,distinct")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--vary", action="store_true", help="batches of 1 to --batch deliveries")
    parser.add_argument("--tasks", action="store_true", help="run the database's own tasks meanwhile")
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--alerts", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--name", default="store_batch")
    args = parser.parse_args()
    count_statements()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for workload in args.workload.split(","):
                for target in args.targets.split(","):
                    results.append(await measure(target, workload, args, Path(tmp)))
    print_table(["target", "workload", "alerts", "CPU µs/delivery", "writer thread CPU µs/delivery",
                 "server CPU µs/delivery", "statements/batch", "round trips/batch", "wall ms/batch",
                 "p99", "max"],
                [[r["target"], r["workload"], r["alerts_per_delivery"], r["cpu_us_per_delivery"],
                  r["writer_thread_cpu_us_per_delivery"], r["server_cpu_us_per_delivery"], r["statements_per_batch"],
                  r["round_trips_per_batch"], r["wall_ms_per_batch"], r["wall_ms_per_batch_p99"],
                  r["wall_ms_per_batch_max"]] for r in results])
    print(f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    path = write_result(args.name, {"batch": args.batch, "vary": args.vary, "tasks": args.tasks,
                                   "batches": args.batches,
                                   "groups": args.groups, "runs": results})
    print(f"results: {path}")


if __name__ == "__main__":
    asyncio.run(main())
