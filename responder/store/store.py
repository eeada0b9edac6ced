"""The store: durable deliveries, incidents, evidence and the action audit, and the job queue
(`store.queue`, responder/store/queue.py) that shares their database and transactions.

Everything that must survive a crash goes through here, in transactions: `record_delivery` commits the
raw payload, its alerts, the incidents (alert groups) they open, join or resolve and the jobs to process
them, all at once; the webhook answers 2xx only after it returns.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from responder.evidence import Evidence, EvidenceStatus
from responder.jobs import PIPELINE_QUEUE, RESOLVE, IncidentJob
from responder.models import (
    AlertStatus,
    Delivery,
    DeliveryReceipt,
    Grouping,
    Incident,
    IncidentStatus,
    Member,
    SourceGrouping,
)
from responder.store.db import Connection, Database, Row, open_database
from responder.store.group_commit import GroupCommit
from responder.store.intake_writer import Placed, dumps, record_batch
from responder.store.migrations import migrate
from responder.store.queue import JobQueue


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
        group_key=row["group_key"],
        members_firing=int(row["members_firing"]),
        members_total=int(row["members_total"]),
        previous_id=row["previous_id"],
        processed_at=row["processed_at"],
    )


def member_from_row(row: Row) -> Member:
    return Member(
        id=int(row["id"]),
        incident_id=int(row["incident_id"]),
        fingerprint=row["fingerprint"],
        starts_at=float(row["starts_at"]),
        status=AlertStatus(row["status"]),
        labels=json.loads(row["labels"]),
        annotations=json.loads(row["annotations"]),
        first_seen=float(row["first_seen"]),
        resolved_at=row["resolved_at"],
    )


class Store:
    def __init__(self, db: Database, *, max_attempts: int = 5, grouping: Grouping | None = None) -> None:
        self.db = db
        # Which groups (incidents) an alert belongs to; without rules, the sender's own groups.
        self.grouping: Grouping = grouping or SourceGrouping()
        # SQLite has one writer anyway; PostgreSQL takes a few batches at once.
        writers = 1 if db.dialect == "sqlite" else 3
        self.queue = JobQueue(db, max_attempts=max_attempts, writers=writers)
        self._intake: GroupCommit[Placed, DeliveryReceipt] = GroupCommit(
            "intake-writer", db, functools.partial(record_batch, max_attempts=max_attempts),
            writers=writers, connection_only=True)

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def tasks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """The store's writer tasks (deliveries, finishing jobs) and its database's own (SQLite's checkpoints),
        for the daemon's supervisor to run."""
        return {**self.db.tasks(), **self._intake.tasks(), **self.queue.tasks()}

    async def close(self) -> None:
        await self._intake.close()
        await self.queue.close()
        await self.db.close()

    async def ping(self) -> None:
        async with self.db.read() as conn:
            await conn.fetchval("SELECT 1")

    # --- intake ---------------------------------------------------------------------------------

    async def record_delivery(self, delivery: Delivery) -> DeliveryReceipt:
        """Commit a delivery (raw payload, alerts, incidents it opens, joins or resolves, their jobs) and
        return once it is durable. Concurrent deliveries share one transaction (see intake_writer); the
        alerts are placed in their groups before it, so the transaction does no rule matching."""
        placements = [self.grouping.place(alert) for alert in delivery.alerts]
        receipt = await self._intake.submit(Placed(delivery, placements))
        # A group it opened is processed group_wait after its commit: its worker wakes then.
        committed = time.time()
        for wait in {p.group_wait for each in placements for p in each if p.group_wait > 0}:
            self.queue.due_at(PIPELINE_QUEUE, committed + wait)
        return receipt

    # --- incidents ------------------------------------------------------------------------------

    async def get_incident(self, incident_id: int) -> Incident | None:
        async with self.db.read() as conn:
            row = await conn.fetchrow("SELECT * FROM incidents WHERE id = $1", incident_id)
        return incident_from_row(row) if row else None

    async def resolve_by_hand(self, incident_id: int, actor: str, reason: str) -> Incident | None:
        """Close an open incident by hand. Who and why are kept with it (`extra.resolved_by`,
        `extra.resolution`), and a resolve job is queued in the same transaction, so the sinks hear of it
        as if its alert had resolved. Its members resolve with it: a re-sent copy of their firing does
        not open the group again, a new firing does. None when no open incident has this id."""
        now = time.time()
        async with self.db.transaction() as conn:
            row = await conn.fetchrow("UPDATE incidents SET status = 'resolved', resolved_at = $1, members_firing = 0"
                                      " WHERE id = $2 AND status = 'open' RETURNING extra", now, incident_id)
            if row is None:
                return None
            await conn.execute("UPDATE incident_members SET status = 'resolved', resolved_at = $1"
                               " WHERE incident_id = $2 AND status = 'firing'", now, incident_id)
            extra = json.loads(row["extra"]) | {"resolved_by": actor, "resolution": reason}
            await conn.execute("UPDATE incidents SET extra = $1 WHERE id = $2", dumps(extra), incident_id)
            await self.queue.enqueue(conn, RESOLVE.new(f"incident:{incident_id}", IncidentJob(),
                                                       incident_id=incident_id))
        return await self.get_incident(incident_id)

    async def incidents_of_alert(self, source: str, fingerprint: str, starts_at: float) -> list[Incident]:
        """The incidents an alert is a member of (one per rule it matched)."""
        async with self.db.read() as conn:
            rows = await conn.fetch(
                "SELECT i.* FROM incidents i JOIN incident_members m ON m.incident_id = i.id"
                " WHERE m.source = $1 AND m.fingerprint = $2 AND m.starts_at = $3 ORDER BY i.id",
                source, fingerprint, starts_at,
            )
        return [incident_from_row(r) for r in rows]

    async def members(self, incident_id: int, limit: int | None = None) -> list[Member]:
        """An incident's members, firing ones first, each group in the order they joined."""
        async with self.db.read() as conn:
            rows = await conn.fetch(
                "SELECT * FROM incident_members WHERE incident_id = $1"
                " ORDER BY CASE WHEN status = 'firing' THEN 0 ELSE 1 END, id LIMIT $2",
                incident_id, limit if limit is not None else 1_000_000,
            )
        return [member_from_row(r) for r in rows]

    async def linked_incidents(self, incident: Incident) -> list[Incident]:
        """The incident of the same group this one follows, and the one that followed it."""
        async with self.db.read() as conn:
            rows = await conn.fetch(
                "SELECT * FROM incidents WHERE id = $1 OR previous_id = $2 ORDER BY id",
                incident.previous_id or 0, incident.id,
            )
        return [incident_from_row(r) for r in rows]

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
        labels: dict[str, str],
        error: str | None,
        evidence: Sequence[tuple[str, Evidence]],
    ) -> list[int]:
        """Within a job's finishing transaction: the labels the incident's members share, any step errors
        and its evidence, as (rule name, evidence) pairs; returns the evidence rows' ids, in order. Action
        decisions are not written here: the guard stores each one before it acts."""
        await conn.execute(
            "UPDATE incidents SET labels = $2, error = $3, processed_at = $4 WHERE id = $1",
            incident_id, dumps(labels), error, time.time(),
        )
        return await self.save_evidence(conn, incident_id, evidence)

    @staticmethod
    async def save_evidence(conn: Connection, incident_id: int, evidence: Sequence[tuple[str, Evidence]]) -> list[int]:
        """Within a job's finishing transaction: evidence rows, as (rule name, evidence) pairs; their ids."""
        now = time.time()
        ids = []
        for rule_name, ev in evidence:
            ids.append(int(await conn.fetchval(
                "INSERT INTO evidence (incident_id, rule, step, collector, title, status, duration_ms, payload,"
                " text, full_text, truncated, created_at, shared)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
                incident_id, rule_name, ev.step, ev.collector, ev.title, ev.status.value, float(ev.duration_ms),
                dumps(ev.payload), ev.text, ev.full_text, int(ev.truncated), now, int(ev.shared),
            )))
        return ids

    async def evidence_by_id(self, ids: Sequence[int]) -> dict[int, Evidence]:
        """Stored evidence by row id."""
        if not ids:
            return {}
        marks = ", ".join(f"${i + 1}" for i in range(len(ids)))
        async with self.db.read() as conn:
            rows = await conn.fetch(f"SELECT * FROM evidence WHERE id IN ({marks})", *ids)
        return {int(r["id"]): Evidence(
            step=r["step"], collector=r["collector"], title=r["title"], status=EvidenceStatus(r["status"]),
            duration_ms=float(r["duration_ms"]), payload=json.loads(r["payload"]), text=r["text"],
            full_text=r["full_text"], truncated=bool(r["truncated"]), shared=bool(r["shared"])) for r in rows}

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
                     max_attempts: int = 5, grouping: Grouping | None = None) -> Store:
    db = await open_database(url, synchronous=synchronous, pool_size=pool_size, timeout=timeout)
    try:
        await migrate(db)
    except BaseException:
        await db.close()
        raise
    return Store(db, max_attempts=max_attempts, grouping=grouping)
