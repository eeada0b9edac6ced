"""The job queue every queue shares (pipeline, mitigations, each sink's outbox): durable rows in the
`jobs` table, handed to one worker at a time.

- `claim` leases runnable jobs (`FOR UPDATE SKIP LOCKED` on PostgreSQL) and never one whose
  `ordering_key` has an earlier job unfinished, so the jobs of one incident or one Slack thread run in order;
- `heartbeat` keeps the leases of running jobs; a worker that vanished loses them when they expire;
- `finish` marks a job done together with its results, fenced by the lease owner: a worker that lost its
  lease cannot commit twice. Jobs finishing together share a transaction (group commit);
- `retry` hands a failed attempt back with its backoff, or fails the job when its attempts run out;
- `postpone` hands a job back for later without counting the attempt (it did not fail, it waits);
- `release` hands back, at shutdown, the jobs of a queue that a worker still holds.

On PostgreSQL every transaction that locks several job rows locks them in id order (claim, heartbeat, finish,
release), so two of them never wait on each other in a cycle: no deadlock between a shutdown's release, the
heartbeats and the jobs finishing meanwhile.

What a job means is not known here: kinds and payloads are the job table's (responder/jobs.py).
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from responder.models import Job, NewJob
from responder.store.db import Connection, Database, Row
from responder.store.group_commit import GroupCommit
from responder.store.intake_writer import dumps

Writes = Callable[[Connection], Awaitable[None]]


# A queued job, written so that SQLite uses the partial index on unfinished jobs (jobs_order): it only uses one
# whose WHERE the query repeats, and `status = 'queued'` alone made it scan every job ever run.
WAITING = "status IN ('queued', 'running') AND status = 'queued'"


class LeaseLost(Exception):
    """The job's lease expired and another worker may own it now; its results are discarded."""


@dataclass(frozen=True, slots=True)
class _Finish:
    job: Job
    result: dict[str, Any] | None
    writes: Writes | None
    follow_ups: tuple[NewJob, ...]


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


class JobQueue:
    def __init__(self, db: Database, *, max_attempts: int = 5, writers: int = 1) -> None:
        self.db = db
        self.max_attempts = max_attempts
        self._finishing: GroupCommit[_Finish, None] = GroupCommit("job-finisher", db, self._finish_batch,
                                                                  writers=writers, connection_only=True)
        # When the jobs queued here with a delay fall due, per queue (see due_at).
        self._due: dict[str, list[float]] = {}

    def tasks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """The finisher's writers, for the daemon's supervisor (GroupCommit.tasks)."""
        return self._finishing.tasks()

    async def close(self) -> None:
        await self._finishing.close()

    def due_at(self, queue: str, when: float) -> None:
        """A job of `queue` falls due at `when` (epoch seconds): its worker claims then rather than at its
        next poll. Noted in this process only (a job another replica queued is found by polling); noting a
        job whose transaction then rolls back costs one claim that finds nothing."""
        heapq.heappush(self._due.setdefault(queue, []), when)

    def next_due(self, queue: str, now: float) -> float | None:
        """The earliest time noted for `queue` that is still after `now`."""
        due = self._due.get(queue)
        while due and due[0] <= now:
            heapq.heappop(due)
        return due[0] if due else None

    async def enqueue(self, conn: Connection, job: NewJob, *, delay: float = 0.0) -> int:
        """Queue a job within the caller's transaction: it exists if and only if that transaction commits."""
        now = time.time()
        if delay > 0:
            self.due_at(job.queue, now + delay)
        return int(await conn.fetchval(
            "INSERT INTO jobs (queue, kind, ordering_key, incident_id, payload, status, max_attempts,"
            " run_after, created_at) VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8) RETURNING id",
            job.queue, job.kind, job.ordering_key, job.incident_id, dumps(job.payload or {}),
            job.max_attempts or self.max_attempts, now + delay, now,
        ))

    @staticmethod
    async def queued(conn: Connection, queue: str, ordering_key: str, kind: str) -> bool:
        """Whether a job of this kind already waits on the key: work that reads the newest state when it
        runs (a parent edit, a refresh) needs only one."""
        count = await conn.fetchval(
            f"SELECT COUNT(*) FROM jobs WHERE queue = $1 AND ordering_key = $2 AND kind = $3 AND {WAITING}",
            queue, ordering_key, kind)
        return int(count) > 0

    @staticmethod
    async def hasten(conn: Connection, queue: str, ordering_key: str, kind: str,
                     payload: dict[str, Any] | None = None) -> bool:
        """Make a waiting job of this kind on the key due now, and with `payload` run it with that one (the
        request it now stands for); False if none waits."""
        return await conn.execute(
            "UPDATE jobs SET run_after = $4, payload = CASE WHEN $5 = '' THEN payload ELSE $5 END"
            f" WHERE queue = $1 AND ordering_key = $2 AND kind = $3 AND {WAITING}",
            queue, ordering_key, kind, time.time(), dumps(payload) if payload is not None else "") > 0

    async def schedule(self, job: NewJob, delay: float) -> None:
        """Queue a job in a transaction of its own, to run after `delay` seconds."""
        async with self.db.transaction() as conn:
            await self.enqueue(conn, job, delay=delay)

    async def claim(self, queue: str, owner: str, limit: int, lease_seconds: float) -> list[Job]:
        """Take up to `limit` runnable jobs: queued and due, or running with an expired lease, and
        never one whose `ordering_key` has an earlier job still unfinished."""
        lock = "FOR UPDATE SKIP LOCKED" if self.db.dialect == "postgres" else ""

        async def take(conn: Connection) -> list[Row]:
            # The time once the transaction has begun: a job committed while this claim waited for SQLite's
            # writer lock is due by it (its run_after is its commit's time), and is claimed now.
            now = time.time()
            return await conn.fetch(
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

        # A claim lost to a power failure only means the job runs again, as every job left running does.
        rows = await self.db.run_batch(take, durable=False)
        return sorted((_job(r) for r in rows), key=lambda j: j.id)

    async def finish(self, job: Job, result: dict[str, Any] | None = None, writes: Writes | None = None,
                     follow_ups: Sequence[NewJob] = ()) -> None:
        """Mark a job done together with its results, or not at all (LeaseLost). Jobs finishing at the
        same time share a transaction (group commit); one that lost its lease is retried alone and fails.
        `writes` awaits nothing but the connection it is given (statements only, no network call): on SQLite
        the whole transaction runs on the database's thread (Database.run_batch)."""
        await self._finishing.submit(_Finish(job, result, writes, tuple(follow_ups)))

    async def _finish_batch(self, conn: Connection, batch: Sequence[_Finish]) -> list[None]:
        now = time.time()
        # The job rows first, in id order (see the module's docstring), and only then the writes, which
        # lock no job row that is running but do lock incidents.
        for finish in sorted(batch, key=lambda f: f.job.id):
            job = finish.job
            changed = await conn.execute(
                "UPDATE jobs SET status = 'done', finished_at = $3, result = $4, last_error = NULL"
                " WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
                job.id, job.lease_owner, now, dumps(finish.result or {}),
            )
            if changed != 1:
                raise LeaseLost(f"job {job.id} is no longer held by {job.lease_owner}")
        # In incident order, the order webhook deliveries lock incidents in: no deadlock between the two.
        for finish in sorted(batch, key=lambda f: (f.job.incident_id or 0, f.job.id)):
            if finish.writes is not None:
                await finish.writes(conn)
            for follow_up in finish.follow_ups:
                await self.enqueue(conn, follow_up)
        return [None] * len(batch)

    async def heartbeat(self, job_ids: Sequence[int], owner: str, lease_seconds: float) -> int:
        """Keep the lease on jobs still being worked on, so a long job is not taken twice."""
        if not job_ids:
            return 0
        async with self.db.transaction() as conn:
            extended = 0
            # In id order: two replicas renewing overlapping sets never wait on each other in a cycle.
            for job_id in sorted(job_ids):
                extended += await conn.execute(
                    "UPDATE jobs SET lease_expires = $3 WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
                    job_id, owner, time.time() + lease_seconds,
                )
            return extended

    async def retry(self, job: Job, error: str, delay: float, *, permanent: bool = False) -> str:
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
        if status == "queued":
            self.due_at(job.queue, time.time() + delay)
        return str(status or "lost")

    async def postpone(self, job: Job, delay: float) -> bool:
        """Hand a running job back, due in `delay` seconds, its attempt not counted; False if its lease was lost."""
        async with self.db.transaction() as conn:
            kept = await conn.execute(
                "UPDATE jobs SET status = 'queued', attempts = attempts - 1, run_after = $3, lease_owner = NULL,"
                " lease_expires = NULL WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
                job.id, job.lease_owner, time.time() + delay) == 1
        if kept:
            self.due_at(job.queue, time.time() + delay)
        return kept

    async def release(self, queue: str, owner: str) -> int:
        """Hand back, unconsumed, every job of `queue` this owner still holds (graceful shutdown). Only that
        queue's: the owner's workers of other queues may still be finishing theirs."""
        lock = "ORDER BY id FOR UPDATE" if self.db.dialect == "postgres" else ""
        async with self.db.transaction() as conn:
            return await conn.execute(
                "UPDATE jobs SET status = 'queued', attempts = attempts - 1, lease_owner = NULL,"
                " lease_expires = NULL WHERE id IN (SELECT id FROM jobs WHERE queue = $1 AND lease_owner = $2"
                f" AND status = 'running' {lock})",
                queue, owner,
            )

    async def recover_all_running(self) -> int:
        """Embedded mode has one daemon per file: whatever was running when it died runs again now."""
        async with self.db.transaction() as conn:
            return await conn.execute(
                "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires = NULL"
                " WHERE status = 'running'"
            )

    async def depth(self, queue: str | None = None) -> int:
        async with self.db.read() as conn:
            if queue is None:
                value = await conn.fetchval("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')")
            else:
                value = await conn.fetchval(
                    "SELECT COUNT(*) FROM jobs WHERE queue = $1 AND status IN ('queued', 'running')", queue
                )
        return int(value)

    async def rows(self, *, incident_id: int | None = None, queue: str | None = None) -> list[Row]:
        async with self.db.read() as conn:
            return await conn.fetch(
                "SELECT * FROM jobs WHERE ($1 = 0 OR incident_id = $1) AND ($2 = '' OR queue = $2) ORDER BY id",
                incident_id or 0, queue or "",
            )
