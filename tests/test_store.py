"""The store on both engines: batched intake semantics, dedup keys, the leased queue and its ordering, a
failed writer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from responder.models import Alert, AlertStatus, Delivery, NewJob
from responder.store import LeaseLost, Store, WriterFailed, open_store
from responder.store.db import Connection, SqliteDatabase
from tests.support.services import PG_BASE, unique
from tests.test_supervisor import leaking_a_cancellation


def alert(fp: str, status: AlertStatus = AlertStatus.FIRING, starts_at: float = 100.0) -> Alert:
    return Alert("alertmanager", status, fp, starts_at, {"alertname": f"A{fp}"})


async def test_concurrent_deliveries_share_a_batch_and_keep_per_delivery_answers(store: Store) -> None:
    deliveries = [
        Delivery("pagerduty", b"1", [alert("x")], dedup_key="evt-1"),
        Delivery("pagerduty", b"1 again", [alert("x")], dedup_key="evt-1"),   # same event id: stored once
        Delivery("alertmanager", b"2", [alert("a"), alert("b")]),
        Delivery("alertmanager", b"3", [alert("a")]),                         # re-delivery of a
        Delivery("alertmanager", b"4", [alert("b", AlertStatus.RESOLVED)]),   # b resolves in the same batch
    ]
    receipts = await asyncio.gather(*(store.record_delivery(d) for d in deliveries))
    assert [r.duplicate for r in receipts] == [False, True, False, False, False]
    assert receipts[1].payload_id == receipts[0].payload_id
    assert sum(r.opened for r in receipts) == 3
    assert sum(r.resolved for r in receipts) == 1
    by_fp = {i.fingerprint: i for i in await store.list_incidents()}
    assert {fp: (i.status.value, i.deliveries) for fp, i in by_fp.items()} == {
        "x": ("open", 1), "a": ("open", 2), "b": ("resolved", 2)}
    again = await store.record_delivery(Delivery("pagerduty", b"later", [alert("x")], dedup_key="evt-1"))
    assert again.duplicate and again.payload_id == receipts[0].payload_id
    async with store.db.read() as conn:
        assert await conn.fetchval("SELECT COUNT(*) FROM payloads") == 4
        linked = await conn.fetch("SELECT fingerprint, incident_id FROM alerts ORDER BY id")
    assert all(row["incident_id"] == by_fp[row["fingerprint"]].id for row in linked)


async def test_newer_firing_supersedes_a_member_whose_resolution_was_never_seen(store: Store) -> None:
    await store.record_delivery(Delivery("alertmanager", b"", [alert("f", starts_at=100.0)]))
    await store.record_delivery(Delivery("alertmanager", b"", [alert("f", starts_at=200.0)]))
    [incident] = await store.list_incidents()
    members = {m.starts_at: m.status.value for m in await store.members(incident.id)}
    assert members == {100.0: "resolved", 200.0: "firing"}
    assert (incident.status.value, incident.members_firing, incident.members_total) == ("open", 1, 2)


async def test_resolution_closes_the_open_firing_that_started_at_or_before_it(store: Store) -> None:
    await store.record_delivery(Delivery("alertmanager", b"1", [alert("r", starts_at=100.0)]))
    await store.record_delivery(Delivery("alertmanager", b"2", [alert("r", starts_at=200.0)]))  # supersedes 100
    # A late resolution of the older firing leaves the newer one open ...
    late = await store.record_delivery(Delivery("alertmanager", b"3", [alert("r", AlertStatus.RESOLVED, 100.0)]))
    assert late.resolved == 0
    # ... and a resolution stamped later than the open firing's start closes it (PagerDuty resolves this way).
    closing = await store.record_delivery(Delivery("alertmanager", b"5", [alert("r", AlertStatus.RESOLVED, 250.0)]))
    assert closing.resolved == 1
    [incident] = await store.list_incidents()
    assert (incident.status.value, incident.members_firing, incident.members_total) == ("resolved", 0, 2)
    jobs = await store.queue.rows(queue="pipeline")
    assert [j["kind"] for j in jobs].count("resolve") == 1


async def test_a_group_is_one_incident_and_a_refire_after_resolution_opens_a_linked_one(store: Store) -> None:
    def grouped(fp: str, status: AlertStatus = AlertStatus.FIRING, starts_at: float = 100.0) -> Alert:
        return Alert("alertmanager", status, fp, starts_at, {"alertname": "PodDown", "pod": fp}, group_key="g")

    await store.record_delivery(Delivery("alertmanager", b"1", [grouped("a"), grouped("b")]))
    await store.record_delivery(Delivery("alertmanager", b"2", [grouped("a"), grouped("b"), grouped("c")]))
    [incident] = await store.list_incidents()
    assert (incident.group_key, incident.members_firing, incident.members_total) == ("g", 3, 3)
    assert incident.labels == {"alertname": "PodDown"}  # what the members share
    kinds = [j["kind"] for j in await store.queue.rows(queue="pipeline")]
    assert kinds == ["process", "members"]
    await store.record_delivery(Delivery("alertmanager", b"3", [grouped(fp, AlertStatus.RESOLVED) for fp in "abc"]))
    # Alertmanager sends resolved alerts again, and a late copy of the old firing: they open nothing ...
    await store.record_delivery(Delivery("alertmanager", b"4", [grouped("a", AlertStatus.RESOLVED), grouped("b")]))
    assert len(await store.list_incidents()) == 1
    # ... a new firing does.
    await store.record_delivery(Delivery("alertmanager", b"5", [grouped("a", starts_at=200.0)]))
    first, second = sorted(await store.list_incidents(), key=lambda i: i.id)
    assert first.status.value == "resolved" and second.status.value == "open"
    assert second.previous_id == first.id
    assert [i.id for i in await store.linked_incidents(first)] == [second.id]


def member_of(group: str, fp: str, status: AlertStatus = AlertStatus.FIRING, starts_at: float = 100.0) -> Alert:
    return Alert("alertmanager", status, fp, starts_at, {"alertname": "PodDown", "pod": fp}, group_key=group)


async def firing_members(store: Store, incident_id: int) -> dict[tuple[str, float], str]:
    return {(m.fingerprint, m.starts_at): m.status.value for m in await store.members(incident_id)}


async def test_member_counts_follow_batches_that_fire_and_resolve_the_same_alerts(store: Store) -> None:
    def batch(*alerts: Alert) -> list[Delivery]:
        return [Delivery("alertmanager", b"", [a]) for a in alerts]

    resolved = AlertStatus.RESOLVED
    # One batch: a fires and resolves, c fires again with a later start, d resolves without having fired.
    first = await asyncio.gather(*(store.record_delivery(d) for d in batch(
        member_of("g", "a"), member_of("g", "b"), member_of("g", "c"), member_of("g", "a", resolved),
        member_of("g", "c", starts_at=200.0), member_of("g", "d", resolved))))
    [incident] = await store.list_incidents()
    assert await firing_members(store, incident.id) == {
        ("a", 100.0): "resolved", ("b", 100.0): "firing", ("c", 100.0): "resolved", ("c", 200.0): "firing"}
    assert (incident.status.value, incident.members_firing, incident.members_total, incident.deliveries) == (
        "open", 2, 4, 6)
    assert sum(r.opened for r in first) == 1 and sum(r.resolved for r in first) == 0
    # b again, and resolved in the same batch, e joins; an old copy of a's firing revives nothing.
    second = await asyncio.gather(*(store.record_delivery(d) for d in batch(
        member_of("g", "b"), member_of("g", "e"), member_of("g", "b", resolved), member_of("g", "a"))))
    [incident] = await store.list_incidents()
    assert await firing_members(store, incident.id) == {
        ("a", 100.0): "resolved", ("b", 100.0): "resolved", ("c", 100.0): "resolved", ("c", 200.0): "firing",
        ("e", 100.0): "firing"}
    assert (incident.members_firing, incident.members_total) == (2, 5)
    assert sum(r.updated for r in second) == 4  # every delivery of the batch changed the incident's members
    third = await asyncio.gather(*(store.record_delivery(d) for d in batch(
        member_of("g", "c", resolved, 200.0), member_of("g", "e", resolved))))
    [incident] = await store.list_incidents()
    assert (incident.status.value, incident.members_firing, incident.members_total) == ("resolved", 0, 5)
    assert sum(r.resolved for r in third) == 1
    kinds = [j["kind"] for j in await store.queue.rows(queue="pipeline")]
    assert kinds == ["process", "members", "resolve"]


async def test_replicas_opening_the_same_groups_at_once_open_one_incident_each_with_exact_counts(
        store: Store, store_url: str) -> None:
    replica = await open_store(store_url)
    try:
        for run in range(5):
            group = f"g{run}"
            deliveries = [Delivery("alertmanager", b"", [member_of(group, f"{group}-{n % 12}")]) for n in range(24)]
            # Each replica commits its first batch at once: both find no open incident and insert one.
            await asyncio.gather(*(s.record_delivery(d) for n, d in enumerate(deliveries)
                                   for s in ((store, replica)[n % 2],)))
        incidents = await store.list_incidents()
        assert sorted(i.group_key for i in incidents) == [f"g{run}" for run in range(5)]
        for incident in incidents:
            members = await firing_members(store, incident.id)
            assert (incident.status.value, incident.deliveries, incident.members_total, incident.members_firing) == (
                "open", 24, 12, 12)
            assert len(members) == 12 and set(members.values()) == {"firing"}
        kinds = [j["kind"] for j in await store.queue.rows(queue="pipeline")]
        assert kinds.count("process") == 5 and "resolve" not in kinds
    finally:
        await replica.close()


async def test_queue_keeps_order_per_key_and_fences_completion_by_lease(store: Store) -> None:
    async with store.db.transaction() as conn:
        first = await store.queue.enqueue(conn, NewJob("q", "one", "k1"))
        second = await store.queue.enqueue(conn, NewJob("q", "two", "k1"))
        other = await store.queue.enqueue(conn, NewJob("q", "three", "k2"))
    claimed = await store.queue.claim("q", "worker-a", 10, lease_seconds=30)
    assert [j.id for j in claimed] == [first, other]  # `second` waits for `first`
    assert await store.queue.claim("q", "worker-b", 10, lease_seconds=30) == []
    await store.queue.finish(claimed[0])
    [next_job] = await store.queue.claim("q", "worker-b", 10, lease_seconds=30)
    assert next_job.id == second

    # worker-a's lease on `other` expires; worker-b takes it; worker-a can no longer commit it.
    async with store.db.transaction() as conn:
        await conn.execute("UPDATE jobs SET lease_expires = 0 WHERE id = $1", other)
    [stolen] = await store.queue.claim("q", "worker-b", 10, lease_seconds=30)
    assert stolen.id == other and stolen.attempts == 2
    with pytest.raises(LeaseLost):
        await store.queue.finish(claimed[1])
    await store.queue.finish(stolen)
    assert await store.queue.retry(next_job, "boom", 0) == "queued"
    assert await store.queue.depth("q") == 1


async def test_a_postponed_job_waits_unconsumed_and_hastened_runs_now_with_a_new_payload(store: Store) -> None:
    async with store.db.transaction() as conn:
        waiting = await store.queue.enqueue(conn, NewJob("q", "edit", "k1", payload={"paced": True}, max_attempts=1))
    [job] = await store.queue.claim("q", "worker-a", 10, lease_seconds=30)
    assert await store.queue.postpone(job, 60)
    assert not await store.queue.postpone(job, 60)  # no longer held
    [row] = await store.queue.rows(queue="q")
    assert (row["status"], row["attempts"], row["last_error"]) == ("queued", 0, None)
    assert await store.queue.claim("q", "worker-a", 10, lease_seconds=30) == []
    async with store.db.transaction() as conn:
        assert await store.queue.hasten(conn, "q", "k1", "edit", payload={"paced": False})
    [job] = await store.queue.claim("q", "worker-a", 10, lease_seconds=30)
    # Waiting did not use up its only attempt.
    assert (job.id, job.payload, job.attempts) == (waiting, {"paced": False}, 1)


async def test_a_batch_is_written_whole_or_not_at_all(store: Store) -> None:
    async def half_then_fail(conn: Connection) -> None:
        await conn.execute("INSERT INTO settings (key, value, updated_at, updated_by) VALUES ('a', '{}', 0, 't')")
        raise ValueError("the batch fails after its first statement")

    async def waits_on_something_else(conn: Connection) -> None:
        await conn.execute("INSERT INTO settings (key, value, updated_at, updated_by) VALUES ('b', '{}', 0, 't')")
        await asyncio.sleep(0)

    with pytest.raises(ValueError):
        await store.db.run_batch(half_then_fail)
    if store.dialect == "sqlite":  # the batch runs on the database's thread, where it may not wait on the loop
        with pytest.raises(RuntimeError):
            await store.db.run_batch(waits_on_something_else)
    async with store.db.read() as conn:
        assert await conn.fetchval("SELECT COUNT(*) FROM settings WHERE key IN ('a', 'b')") == 0


async def test_without_a_supervisor_a_failed_writer_refuses_what_it_held_and_the_next_write_starts_it(
        store: Store) -> None:
    store._intake.write = leaking_a_cancellation(store._intake.write)
    with pytest.raises(WriterFailed, match=r"the store's intake-writer failed \(CancelledError\)"):
        await store.record_delivery(Delivery("alertmanager", b"1", [alert("a")]))
    receipt = await store.record_delivery(Delivery("alertmanager", b"2", [alert("b")]))
    assert receipt.opened == 1
    assert [i.fingerprint for i in await store.list_incidents()] == ["b"]


ROW_TYPES = ("bigint", "double precision", "text", "bytea", "integer")
# Every kind of value a batch stores, NULL in each column, and values at the edges of each type.
LITERAL_ROWS = [
    (1, 1795000000.123456, "plain", b"{\"alerts\": []}", 0),
    (2, None, None, None, None),
    (2**63 - 1, 5e-324, "é 😀 \u202e ünïcödé \\u0000 'quoted' \"double\"", b"\x00\xff\x00 binary", -(2**31)),
    (-(2**63), -1.7976931348623157e308, "", b"", 2**31 - 1),
    (3, 0.1, "\n\t\\", b"x" * 100_000, 1),
    (4, -0.0, "[1, 2]", None, None),
]
MANY_ROWS = [(100 + n, *row[1:]) for n, row in enumerate(LITERAL_ROWS * 50)]


async def test_literal_rows_round_trip_every_column_type(store: Store) -> None:
    async with store.db.transaction() as conn:
        await conn.execute("CREATE TABLE literal_rows (n BIGINT, f DOUBLE PRECISION, t TEXT, b BYTEA, i INTEGER)"
                           if store.dialect == "postgres" else
                           "CREATE TABLE literal_rows (n INTEGER, f REAL, t TEXT, b BLOB, i INTEGER)")
        source, args = conn.rows_source(LITERAL_ROWS, ROW_TYPES)
        await conn.execute(f"INSERT INTO literal_rows SELECT * FROM {source} WHERE true", *args)
        # The same statement again with another number of rows, whose only bytes are empty.
        source, args = conn.rows_source(LITERAL_ROWS[3:4], ROW_TYPES)
        await conn.execute(f"INSERT INTO literal_rows SELECT v.column1 + 10, v.column2, v.column3, v.column4,"
                           f" v.column5 FROM {source} WHERE true", *args)
        # Many rows at once (SQLite takes them otherwise than a few).
        source, args = conn.rows_source(MANY_ROWS, ROW_TYPES)
        await conn.execute(f"INSERT INTO literal_rows SELECT * FROM {source} WHERE true", *args)
    async with store.db.read() as conn:
        rows = await conn.fetch("SELECT n, f, t, b, i FROM literal_rows ORDER BY n")
    stored = [(r["n"], r["f"], r["t"], None if r["b"] is None else bytes(r["b"]), r["i"]) for r in rows]
    assert stored == sorted([*LITERAL_ROWS, (-(2**63) + 10, *LITERAL_ROWS[3][1:]), *MANY_ROWS],
                            key=lambda row: row[0])
    assert [type(value) for value in stored[2]] == [int, float, str, bytes, int]  # n = 1


async def test_sqlite_refuses_text_with_a_nul_rather_than_cutting_it(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'nul.db'}")
    try:
        with pytest.raises(ValueError, match="NUL"):
            await store.record_delivery(Delivery("alertmanager", b"", [alert("a\x00b")]))
        assert await store.list_incidents() == []
    finally:
        await store.close()


async def test_the_wal_checkpointer_keeps_the_wal_bounded_under_a_burst(tmp_path: Path) -> None:
    path = tmp_path / "burst.db"
    store = await open_store(f"sqlite:///{path}")
    wal = tmp_path / "burst.db-wal"
    body = b"x" * 60_000

    async def burst(first: int) -> None:
        # 25 batches of 32 deliveries, 48 MB in all: about 12,000 pages through the WAL.
        for n in range(first, first + 800, 32):
            await asyncio.gather(*(store.record_delivery(Delivery("alertmanager", body, [alert(f"a{n + i}")]))
                                   for i in range(32)))

    assert isinstance(store.db, SqliteDatabase)
    # This burst writes in a fraction of a second what a storm writes in several: the checkpointer looks as
    # much sooner.
    store.db.checkpointer.interval = 0.005
    try:
        tasks = [asyncio.create_task(run()) for run in store.db.tasks().values()]
        await burst(0)
        high_water = wal.stat().st_size  # SQLite writes a restarted WAL from its start, never shrinks it
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Stopped, it leaves checkpoints to SQLite again.
        await burst(800)
        async with store.db.read() as conn:
            assert await conn.fetchval("SELECT COUNT(*) FROM incidents") == 1600
    finally:
        await store.close()
    # Unbounded, the WAL holds the whole burst (54 MB); the checkpointer keeps it to a fraction, more of one
    # when a loaded machine lets it run less often (up to 24 MB seen).
    assert high_water < 32_000_000
    assert wal.exists() is False  # the last connection closed checkpoints the whole WAL and removes it


async def test_a_responder_starts_while_another_schema_of_its_database_is_migrating(pg_url: str) -> None:
    """Responders sharing one PostgreSQL database in schemas of their own (`?schema=`) do not wait for each
    other's migrations: a first start elsewhere (hundreds of milliseconds of DDL) does not hold this one up."""
    other = unique("s")
    blocker = await asyncpg.connect(PG_BASE)
    try:
        # The other responder's migration is kept running: it waits for a table this connection locks.
        await blocker.execute(f'CREATE SCHEMA "{other}"; CREATE TABLE "{other}".schema_migrations'
                              " (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at DOUBLE PRECISION)")
        async with blocker.transaction():
            await blocker.execute(f'LOCK TABLE "{other}".schema_migrations IN ACCESS EXCLUSIVE MODE')
            migrating = asyncio.create_task(open_store(f"{PG_BASE}?schema={other}"))
            await asyncio.sleep(0.5)
            assert not migrating.done()
            async with asyncio.timeout(10):
                opened = await open_store(pg_url)
            await opened.close()
        await (await migrating).close()
    finally:
        await blocker.execute(f'DROP SCHEMA IF EXISTS "{other}" CASCADE')
        await blocker.close()
