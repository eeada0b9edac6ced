"""The store: durable deliveries, incidents, the job queue, evidence and the action audit.

Everything that must survive a crash goes through here, in transactions:
- `record_delivery` commits the raw payload, its alerts, the incidents they open or resolve and the
  jobs to process them, all at once; the webhook answers 2xx only after it returns.
- the job queue hands each job to one worker at a time (leases, `FOR UPDATE SKIP LOCKED` on
  PostgreSQL), keeps jobs of one `ordering_key` in order, and fences completion with the lease owner so
  a worker that lost its lease cannot commit results twice.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from responder.models import (
    Delivery,
    DeliveryReceipt,
    Incident,
    IncidentStatus,
    Job,
)
from responder.store.db import Connection, Database, Row, open_database
from responder.store.group_commit import GroupCommit
from responder.store.intake_writer import dumps, record_batch
from responder.store.migrations import migrate


class LeaseLost(Exception):
    """The job's lease expired and another worker may own it now; its results are discarded."""


@dataclass(frozen=True, slots=True)
class NewJob:
    queue: str
    kind: str
    ordering_key: str
    incident_id: int | None = None
    payload: dict[str, Any] | None = None
    # None: the store's default. Outbox rows for external APIs use many more, so an outage only delays them.
    max_attempts: int | None = None


PIPELINE_QUEUE = "pipeline"


@dataclass(frozen=True, slots=True)
class _Finish:
    job: Job
    result: dict[str, Any] | None
    writes: Callable[[Connection], Awaitable[None]] | None
    follow_ups: tuple[NewJob, ...]


def incident_from_row(row: Row) -> Incident:
    return Incident(
        id=int(row["id"]),
        source=row["source"],
        fingerprint=row["fingerprint"],
        alertname=row["alertname"],
        status=IncidentStatus(row["status"]),
        starts_at=float(row["starts_at"]),
        opened_at=float(row["opened_at"]),
        last_seen=float(row["last_seen"]),
        deliveries=int(row["deliveries"]),
        labels=json.loads(row["labels"]),
        annotations=json.loads(row["annotations"]),
        last_alert_id=int(row["last_alert_id"]),
        rule=row["rule"],
        resolved_at=row["resolved_at"],
        error=row["error"],
        extra=json.loads(row["extra"]),
    )


def _job(row: Row) -> Job:
    return Job(
        id=int(row["id"]),
        queue=row["queue"],
        kind=row["kind"],
        ordering_key=row["ordering_key"],
        incident_id=row["incident_id"],
        payload=json.loads(row["payload"]),
        attempts=int(row["attempts"]),
        lease_owner=row["lease_owner"],
        created_at=float(row["created_at"]),
    )


class Store:
    def __init__(self, db: Database, *, max_attempts: int = 5) -> None:
        self.db = db
        self.max_attempts = max_attempts
        # SQLite has one writer anyway; PostgreSQL takes a few batches at once.
        writers = 1 if db.dialect == "sqlite" else 3
        self._intake: GroupCommit[Delivery, DeliveryReceipt] = GroupCommit(
            "intake-writer", db, functools.partial(record_batch, max_attempts=max_attempts), writers=writers)
        self._finishing: GroupCommit[_Finish, None] = GroupCommit(
            "job-finisher", db, self._finish_batch, writers=writers)

    @property
    def dialect(self) -> str:
        return self.db.dialect

    async def close(self) -> None:
        await self._intake.close()
        await self._finishing.close()
        await self.db.close()

    async def ping(self) -> None:
        async with self.db.read() as conn:
            await conn.fetchval("SELECT 1")

    # --- intake ---------------------------------------------------------------------------------

    async def record_delivery(self, delivery: Delivery) -> DeliveryReceipt:
        """Commit a delivery (raw payload, alerts, incidents it opens or resolves, their jobs) and return
        once it is durable. Concurrent deliveries share one transaction (see intake_writer)."""
        return await self._intake.submit(delivery)

    # --- jobs -----------------------------------------------------------------------------------

    async def enqueue(self, conn: Connection, job: NewJob, *, delay: float = 0.0) -> int:
        now = time.time()
        return int(await conn.fetchval(
            "INSERT INTO jobs (queue, kind, ordering_key, incident_id, payload, status, max_attempts,"
            " run_after, created_at) VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8) RETURNING id",
            job.queue, job.kind, job.ordering_key, job.incident_id, dumps(job.payload or {}),
            job.max_attempts or self.max_attempts, now + delay, now,
        ))

    async def claim_jobs(self, queue: str, owner: str, limit: int, lease_seconds: float) -> list[Job]:
        """Take up to `limit` runnable jobs: queued and due, or running with an expired lease, and
        never one whose `ordering_key` has an earlier job still unfinished."""
        now = time.time()
        lock = "FOR UPDATE SKIP LOCKED" if self.db.dialect == "postgres" else ""
        async with self.db.transaction() as conn:
            rows = await conn.fetch(
                "UPDATE jobs SET status = 'running', lease_owner = $2, lease_expires = $3,"
                " attempts = attempts + 1 WHERE id IN ("
                "  SELECT j.id FROM jobs j WHERE j.queue = $1 AND j.status IN ('queued', 'running')"
                "  AND ((j.status = 'queued' AND j.run_after <= $4) OR (j.status = 'running' AND j.lease_expires < $4))"
                # The oldest unfinished job of its ordering key, found by an index lookup per candidate
                # (an anti-join here degrades to a scan of the whole backlog when statistics are stale).
                "  AND j.id = (SELECT MIN(p.id) FROM jobs p WHERE p.queue = j.queue AND p.ordering_key = j.ordering_key"
                "   AND p.status IN ('queued', 'running'))"
                f"  ORDER BY j.id LIMIT $5 {lock}"
                ") RETURNING *",
                queue, owner, now + lease_seconds, now, limit,
            )
        return sorted((_job(r) for r in rows), key=lambda j: j.id)

    async def finish_job(
        self,
        job: Job,
        result: dict[str, Any] | None = None,
        writes: Callable[[Connection], Awaitable[None]] | None = None,
        follow_ups: Sequence[NewJob] = (),
    ) -> None:
        """Mark a job done together with its results, or not at all (LeaseLost). Jobs finishing at the
        same time share a transaction (group commit); one that lost its lease is retried alone and fails."""
        await self._finishing.submit(_Finish(job, result, writes, tuple(follow_ups)))

    async def _finish_batch(self, conn: Connection, batch: Sequence[_Finish]) -> list[None]:
        now = time.time()
        for finish in batch:
            job = finish.job
            changed = await conn.execute(
                "UPDATE jobs SET status = 'done', finished_at = $3, result = $4, last_error = NULL"
                " WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
                job.id, job.lease_owner, now, dumps(finish.result or {}),
            )
            if changed != 1:
                raise LeaseLost(f"job {job.id} is no longer held by {job.lease_owner}")
            if finish.writes is not None:
                await finish.writes(conn)
            for follow_up in finish.follow_ups:
                await self.enqueue(conn, follow_up)
        return [None] * len(batch)

    async def extend_leases(self, job_ids: Sequence[int], owner: str, lease_seconds: float) -> int:
        """Heartbeat: keep the lease on jobs still being worked on, so a long job is not taken twice."""
        if not job_ids:
            return 0
        async with self.db.transaction() as conn:
            extended = 0
            for job_id in job_ids:
                extended += await conn.execute(
                    "UPDATE jobs SET lease_expires = $3 WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
                    job_id, owner, time.time() + lease_seconds,
                )
            return extended

    async def retry_job(self, job: Job, error: str, delay: float, *, permanent: bool = False) -> str:
        """Give a failed attempt back to the queue, or mark the job failed when attempts run out."""
        async with self.db.transaction() as conn:
            status = await conn.fetchval(
                "UPDATE jobs SET status = CASE WHEN $5 OR attempts >= max_attempts THEN 'failed' ELSE 'queued' END,"
                " run_after = $3, last_error = $4, lease_owner = NULL, lease_expires = NULL,"
                " finished_at = CASE WHEN $5 OR attempts >= max_attempts"
                " THEN CAST($6 AS DOUBLE PRECISION) ELSE NULL END"
                " WHERE id = $1 AND lease_owner = $2 AND status = 'running' RETURNING status",
                job.id, job.lease_owner, time.time() + delay, error[:4000], permanent, time.time(),
            )
        return str(status or "lost")

    async def release_jobs(self, owner: str) -> int:
        """Hand back, unconsumed, every job this owner still holds (graceful shutdown)."""
        async with self.db.transaction() as conn:
            return await conn.execute(
                "UPDATE jobs SET status = 'queued', attempts = attempts - 1, lease_owner = NULL,"
                " lease_expires = NULL WHERE lease_owner = $1 AND status = 'running'",
                owner,
            )

    async def recover_all_running(self) -> int:
        """Embedded mode has one daemon per file: whatever was running when it died runs again now."""
        async with self.db.transaction() as conn:
            return await conn.execute(
                "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires = NULL"
                " WHERE status = 'running'"
            )

    async def queue_depth(self, queue: str | None = None) -> int:
        async with self.db.read() as conn:
            if queue is None:
                value = await conn.fetchval("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')")
            else:
                value = await conn.fetchval(
                    "SELECT COUNT(*) FROM jobs WHERE queue = $1 AND status IN ('queued', 'running')", queue
                )
        return int(value)

    async def jobs(self, *, incident_id: int | None = None, queue: str | None = None) -> list[Row]:
        async with self.db.read() as conn:
            return await conn.fetch(
                "SELECT * FROM jobs WHERE ($1 = 0 OR incident_id = $1) AND ($2 = '' OR queue = $2) ORDER BY id",
                incident_id or 0, queue or "",
            )

    # --- incidents ------------------------------------------------------------------------------

    async def get_incident(self, incident_id: int) -> Incident | None:
        async with self.db.read() as conn:
            row = await conn.fetchrow("SELECT * FROM incidents WHERE id = $1", incident_id)
        return incident_from_row(row) if row else None

    async def find_incident(self, source: str, fingerprint: str, starts_at: float) -> Incident | None:
        async with self.db.read() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM incidents WHERE source = $1 AND fingerprint = $2 AND starts_at = $3",
                source, fingerprint, starts_at,
            )
        return incident_from_row(row) if row else None

    async def list_incidents(self, status: str | None = None, limit: int = 1000) -> list[Incident]:
        async with self.db.read() as conn:
            rows = await conn.fetch(
                "SELECT * FROM incidents WHERE ($1 = '' OR status = $1) ORDER BY id DESC LIMIT $2",
                status or "", limit,
            )
        return [incident_from_row(r) for r in rows]

    # --- raw payloads and alerts (replay) -------------------------------------------------------

    async def get_alert(self, alert_id: int) -> Row | None:
        async with self.db.read() as conn:
            return await conn.fetchrow(
                "SELECT a.*, p.body AS payload_body, p.source AS payload_source FROM alerts a"
                " JOIN payloads p ON p.id = a.payload_id WHERE a.id = $1",
                alert_id,
            )

    async def list_alerts(self, limit: int = 100) -> list[Row]:
        async with self.db.read() as conn:
            return await conn.fetch(
                "SELECT id, payload_id, incident_id, source, alertname, status, fingerprint, starts_at,"
                " received_at FROM alerts ORDER BY id DESC LIMIT $1",
                limit,
            )

    # --- evidence and audit ---------------------------------------------------------------------

    async def save_processing(
        self,
        conn: Connection,
        incident_id: int,
        rule: str | None,
        error: str | None,
        evidence: Sequence[tuple[str, dict[str, Any]]],
    ) -> None:
        """Within a job's finishing transaction: the incident's rule and its evidence, as (rule name, row
        fields) pairs. Action decisions are not written here: the guard stores each one before it acts."""
        now = time.time()
        await conn.execute(
            "UPDATE incidents SET rule = $2, error = $3, processed_at = $4 WHERE id = $1",
            incident_id, rule, error, now,
        )
        for rule_name, ev in evidence:
            await conn.execute(
                "INSERT INTO evidence (incident_id, rule, step, collector, title, status, duration_ms, payload,"
                " text, full_text, truncated, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                incident_id, rule_name, ev["step"], ev["collector"], ev["title"], ev["status"],
                float(ev["duration_ms"]), dumps(ev["payload"]), ev["text"], ev.get("full_text"),
                int(bool(ev.get("truncated"))), now,
            )

    async def insert_action(self, conn: Connection, incident_id: int | None, rule: str,
                            action: dict[str, Any]) -> int:
        return int(await conn.fetchval(
            "INSERT INTO actions (incident_id, rule, step, action, target, mode, outcome, guard, reason, params,"
            " output, actor, created_at, finished_at, description)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING id",
            incident_id, rule, action["step"], action["action"], action["target"], action["mode"],
            action["outcome"], action.get("guard"), action.get("reason", ""), dumps(action.get("params", {})),
            dumps(action.get("output", {})), action.get("actor"), action.get("created_at", time.time()),
            action.get("finished_at"), action.get("description", ""),
        ))

    async def evidence(self, incident_id: int) -> list[Row]:
        async with self.db.read() as conn:
            return await conn.fetch("SELECT * FROM evidence WHERE incident_id = $1 ORDER BY id", incident_id)

    async def actions(self, incident_id: int | None = None) -> list[Row]:
        async with self.db.read() as conn:
            return await conn.fetch(
                "SELECT * FROM actions WHERE ($1 = 0 OR incident_id = $1) ORDER BY id",
                incident_id or 0,
            )


async def open_store(url: str, *, synchronous: str = "full", pool_size: int = 10, timeout: float = 5.0,
                     max_attempts: int = 5) -> Store:
    db = await open_database(url, synchronous=synchronous, pool_size=pool_size, timeout=timeout)
    try:
        await migrate(db)
    except BaseException:
        await db.close()
        raise
    return Store(db, max_attempts=max_attempts)
