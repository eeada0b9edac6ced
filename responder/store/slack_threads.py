"""Slack threads in the store: which thread an incident belongs to, where its parent message is, and
what the thread last showed of the incident's group (so edits and member summaries are sent only when
something changed, and not more often than their intervals).

The thread of a new incident is decided once, durably, so every replica and every re-delivery agrees:
- an incident already placed keeps its thread;
- an incident that follows a resolved one of the same group (a re-fire) within the re-fire window joins
  that incident's thread;
- otherwise the incident gets a thread of its own, keyed by the incident under a unique index.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from responder.models import Incident
from responder.store.db import Connection, Row
from responder.store.intake_writer import dumps
from responder.store.store import Store

# STORM: incidents of the previous release that shared their storm's thread without leading it.
LEAD, STORM, REFIRE = "lead", "storm", "refire"


@dataclass(frozen=True, slots=True)
class Thread:
    id: int
    channel: str
    channel_id: str | None
    ts: str | None
    lead_incident_id: int | None
    facts: dict[str, Any]
    # What the parent message showed when last sent (a digest), and when.
    parent_digest: str | None = None
    parent_updated_at: float | None = None
    # The last member summary, and the group counts the thread has told so far ({"total", "resolved"}).
    summary_at: float | None = None
    announced: dict[str, int] | None = None


def _thread(row: Row) -> Thread:
    return Thread(int(row["id"]), row["channel"], row["channel_id"], row["ts"], row["lead_incident_id"],
                  json.loads(row["facts"]), row["parent_digest"], row["parent_updated_at"], row["summary_at"],
                  json.loads(row["announced"]))


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
                "SELECT m.thread_id FROM slack_thread_incidents m JOIN slack_threads t ON t.id = m.thread_id"
                " WHERE m.incident_id = $1 AND t.updated_at >= $2", incident.previous_id or 0, now - refire_window)
            if previous is not None:
                thread_id, role = int(previous["thread_id"]), REFIRE
            else:
                key = f"incident:{incident.id}"
                await conn.execute(
                    "INSERT INTO slack_threads (thread_key, channel, lead_incident_id, created_at, updated_at)"
                    " VALUES ($1, $2, $3, $4, $4) ON CONFLICT (thread_key) DO NOTHING", key, channel, incident.id, now)
                thread_id = int(await conn.fetchval("SELECT id FROM slack_threads WHERE thread_key = $1", key))
                role = LEAD
            await conn.execute(
                "INSERT INTO slack_thread_incidents (incident_id, thread_id, role, joined_at) VALUES ($1, $2, $3, $4)",
                incident.id, thread_id, role, now)
            await conn.execute("UPDATE slack_threads SET updated_at = $2 WHERE id = $1", thread_id, now)
            thread = await conn.fetchrow("SELECT * FROM slack_threads WHERE id = $1", thread_id)
        assert thread is not None
        return _thread(thread), role

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
    async def set_parent(conn: Connection, thread_id: int, channel_id: str, ts: str) -> None:
        await conn.execute("UPDATE slack_threads SET channel_id = $2, ts = $3 WHERE id = $1", thread_id, channel_id, ts)

    @staticmethod
    async def set_shown(conn: Connection, thread_id: int, digest: str, announced: dict[str, int] | None) -> None:
        """The parent as just sent; a parent sent for the first time also shows the group as it is now,
        so the member summaries count from there."""
        await conn.execute(
            "UPDATE slack_threads SET parent_digest = $2, parent_updated_at = $3,"
            " announced = CASE WHEN $4 = '' THEN announced ELSE $4 END WHERE id = $1",
            thread_id, digest, time.time(), dumps(announced) if announced is not None else "")

    @staticmethod
    async def set_announced(conn: Connection, thread_id: int, announced: dict[str, int]) -> None:
        await conn.execute("UPDATE slack_threads SET announced = $2, summary_at = $3 WHERE id = $1",
                           thread_id, dumps(announced), time.time())

    async def record_error(self, incident_id: int, error: str) -> None:
        """A permanent delivery failure, kept on the incident where `responder incidents` shows it."""
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE incidents SET error = CASE WHEN error IS NULL OR error = '' THEN $2"
                " ELSE error || '; ' || $2 END WHERE id = $1", incident_id, error[:1000])

    async def backlog(self, queue: str, key_prefix: str, kinds: list[str], channel: str) -> int:
        """How many rows of these kinds (one message each) are due or being sent for threads in `channel`; a
        row's ordering key is `key_prefix` and its thread's id."""
        kind_params = ", ".join(f"${n}" for n in range(5, 5 + len(kinds)))
        async with self.db.read() as conn:
            count = await conn.fetchval(
                "SELECT COUNT(*) FROM jobs j JOIN slack_threads t ON t.id = CAST(CASE WHEN j.ordering_key LIKE"
                " $2 || '%' THEN substr(j.ordering_key, length($2) + 1) END AS BIGINT)"
                " WHERE j.queue = $1 AND j.status IN ('queued', 'running') AND j.run_after <= $3"
                f" AND t.channel = $4 AND j.kind IN ({kind_params})",
                queue, key_prefix, time.time(), channel, *kinds)
        return int(count)

    async def outbox(self, queue: str, kinds_prefix: str) -> tuple[int, float | None]:
        """How many outbox rows are undelivered, and when the oldest was queued."""
        async with self.db.read() as conn:
            row = await conn.fetchrow(
                "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM jobs WHERE queue = $1"
                " AND status IN ('queued', 'running') AND kind LIKE $2", queue, kinds_prefix + "%")
        assert row is not None
        return int(row["n"]), row["oldest"]
