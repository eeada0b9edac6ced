"""Slack threads in the store: which thread an incident belongs to, and where its parent message is.

The thread of a new incident is decided once, durably, so every replica and every re-delivery agrees:
- an incident already placed keeps its thread;
- a re-fire (same source and fingerprint) within the re-fire window joins the previous firing's thread;
- alerts that arrived together in one delivery with one group key (a storm) share one thread, keyed by
  that delivery, group key and channel under a unique index; the first one there leads it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from responder.models import Incident
from responder.store.db import Connection, Row
from responder.store.intake_writer import dumps
from responder.store.store import Store

LEAD, STORM, REFIRE = "lead", "storm", "refire"


@dataclass(frozen=True, slots=True)
class Thread:
    id: int
    channel: str
    channel_id: str | None
    ts: str | None
    lead_incident_id: int | None
    facts: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Member:
    incident_id: int
    alertname: str
    status: str
    labels: dict[str, str]
    role: str


def _thread(row: Row) -> Thread:
    return Thread(int(row["id"]), row["channel"], row["channel_id"], row["ts"], row["lead_incident_id"],
                  json.loads(row["facts"]))


class SlackThreads:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    async def assign(self, incident: Incident, channel: str, refire_window: float) -> tuple[Thread, str]:
        """The incident's thread and its role there (lead, storm or refire), deciding both the first time."""
        now = time.time()
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                "SELECT t.*, m.role FROM slack_thread_incidents m JOIN slack_threads t ON t.id = m.thread_id"
                " WHERE m.incident_id = $1", incident.id)
            if row is not None:
                return _thread(row), str(row["role"])
            previous = await conn.fetchrow(
                "SELECT t.id FROM slack_threads t JOIN slack_thread_incidents m ON m.thread_id = t.id"
                " JOIN incidents i ON i.id = m.incident_id"
                " WHERE i.source = $1 AND i.fingerprint = $2 AND i.id <> $3 AND t.updated_at >= $4"
                " ORDER BY t.id DESC LIMIT 1",
                incident.source, incident.fingerprint, incident.id, now - refire_window)
            if previous is not None:
                thread_id, role = int(previous["id"]), REFIRE
            else:
                key = await self._storm_key(conn, incident, channel)
                await conn.execute(
                    "INSERT INTO slack_threads (thread_key, channel, created_at, updated_at) VALUES ($1, $2, $3, $3)"
                    " ON CONFLICT (thread_key) DO NOTHING", key, channel, now)
                thread_id = int(await conn.fetchval("SELECT id FROM slack_threads WHERE thread_key = $1", key))
                led = await conn.execute(
                    "UPDATE slack_threads SET lead_incident_id = $2 WHERE id = $1 AND lead_incident_id IS NULL",
                    thread_id, incident.id)
                role = LEAD if led == 1 else STORM
            await conn.execute(
                "INSERT INTO slack_thread_incidents (incident_id, thread_id, role, joined_at) VALUES ($1, $2, $3, $4)",
                incident.id, thread_id, role, now)
            await conn.execute("UPDATE slack_threads SET updated_at = $2 WHERE id = $1", thread_id, now)
            thread = await conn.fetchrow("SELECT * FROM slack_threads WHERE id = $1", thread_id)
        assert thread is not None
        return _thread(thread), role

    @staticmethod
    async def _storm_key(conn: Connection, incident: Incident, channel: str) -> str:
        group_key = str(incident.extra.get("group_key") or "")
        if not group_key:
            return f"incident:{incident.id}"
        payload_id = await conn.fetchval(
            "SELECT payload_id FROM alerts WHERE incident_id = $1 ORDER BY id LIMIT 1", incident.id)
        digest = hashlib.sha256(f"{incident.source}\0{group_key}\0{channel}".encode()).hexdigest()[:24]
        return f"storm:{payload_id}:{digest}"

    async def get(self, thread_id: int) -> Thread | None:
        async with self.db.read() as conn:
            row = await conn.fetchrow("SELECT * FROM slack_threads WHERE id = $1", thread_id)
        return _thread(row) if row is not None else None

    async def of_incident(self, incident_id: int) -> Thread | None:
        """The thread an incident was placed in, if it was."""
        async with self.db.read() as conn:
            row = await conn.fetchrow(
                "SELECT t.* FROM slack_thread_incidents m JOIN slack_threads t ON t.id = m.thread_id"
                " WHERE m.incident_id = $1", incident_id)
        return _thread(row) if row is not None else None

    async def members(self, thread_id: int) -> list[Member]:
        async with self.db.read() as conn:
            rows = await conn.fetch(
                "SELECT i.id, i.alertname, i.status, i.labels, m.role FROM slack_thread_incidents m"
                " JOIN incidents i ON i.id = m.incident_id WHERE m.thread_id = $1 ORDER BY i.id", thread_id)
        return [Member(int(r["id"]), r["alertname"], r["status"], json.loads(r["labels"]), r["role"]) for r in rows]

    # --- within a sink job's finishing transaction ------------------------------------------------

    @staticmethod
    async def set_facts(conn: Connection, thread_id: int, incident_id: int, facts: dict[str, Any]) -> None:
        await conn.execute(
            "UPDATE slack_threads SET facts = $3, lead_incident_id = $2, updated_at = $4 WHERE id = $1",
            thread_id, incident_id, dumps(facts), time.time())

    @staticmethod
    async def claim_parent(conn: Connection, thread_id: int) -> bool:
        """True for exactly one caller per thread: the one that queues its parent message."""
        return await conn.execute(
            "UPDATE slack_threads SET parent_queued = 1 WHERE id = $1 AND parent_queued = 0", thread_id) == 1

    @staticmethod
    async def update_queued(conn: Connection, queue: str, ordering_key: str, kind: str) -> bool:
        """Whether an edit of the parent is already waiting: it renders the newest state when it runs."""
        count = await conn.fetchval(
            "SELECT COUNT(*) FROM jobs WHERE queue = $1 AND ordering_key = $2 AND kind = $3 AND status = 'queued'",
            queue, ordering_key, kind)
        return int(count) > 0

    @staticmethod
    async def set_parent(conn: Connection, thread_id: int, channel_id: str, ts: str) -> None:
        await conn.execute("UPDATE slack_threads SET channel_id = $2, ts = $3 WHERE id = $1", thread_id, channel_id, ts)

    async def record_error(self, incident_id: int, error: str) -> None:
        """A permanent delivery failure, kept on the incident where `responder incidents` shows it."""
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE incidents SET error = CASE WHEN error IS NULL OR error = '' THEN $2"
                " ELSE error || '; ' || $2 END WHERE id = $1", incident_id, error[:1000])

    async def outbox(self, queue: str, kinds_prefix: str) -> tuple[int, float | None]:
        """How many outbox rows are undelivered, and when the oldest was queued."""
        async with self.db.read() as conn:
            row = await conn.fetchrow(
                "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM jobs WHERE queue = $1"
                " AND status IN ('queued', 'running') AND kind LIKE $2", queue, kinds_prefix + "%")
        assert row is not None
        return int(row["n"]), row["oldest"]
