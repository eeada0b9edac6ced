"""Read-only queries behind an incident's full view (the web console and `incidents show`).

Nothing here writes: these read what the intake, the pipeline, the guard and the sinks already committed.
"""

from __future__ import annotations

from responder.models import Incident
from responder.store.db import Row
from responder.store.store import Store, incident_from_row


def _like_member(value: str) -> str:
    """A LIKE pattern matching `value` as one element of a comma-joined list (the incident's rules)."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%,{escaped},%"


class History:
    def __init__(self, store: Store) -> None:
        self.db = store.db

    async def incidents(self, *, status: str = "", rule: str = "", source: str = "",
                        limit: int = 200) -> list[Incident]:
        """Newest first; each filter is ignored when empty. `rule` matches one of the incident's rules."""
        async with self.db.read() as conn:
            rows = await conn.fetch(
                "SELECT * FROM incidents WHERE ($1 = '' OR status = $1) AND ($2 = '' OR source = $2)"
                " AND ($3 = '' OR (',' || COALESCE(rule, '') || ',') LIKE $4 ESCAPE '\\')"
                " ORDER BY id DESC LIMIT $5",
                status, source, rule, _like_member(rule), limit,
            )
        return [incident_from_row(r) for r in rows]

    async def alerts(self, incident_id: int) -> list[Row]:
        """Every delivery of the incident's alert (firing, re-deliveries, resolved), oldest first."""
        async with self.db.read() as conn:
            return await conn.fetch(
                "SELECT id, payload_id, status, starts_at, ends_at, received_at FROM alerts"
                " WHERE incident_id = $1 ORDER BY id", incident_id)

    async def evidence_item(self, evidence_id: int) -> Row | None:
        async with self.db.read() as conn:
            return await conn.fetchrow("SELECT * FROM evidence WHERE id = $1", evidence_id)

    async def approvals(self, incident_id: int) -> list[Row]:
        async with self.db.read() as conn:
            return await conn.fetch(
                "SELECT p.*, a.action, a.target FROM approvals p JOIN actions a ON a.id = p.action_id"
                " WHERE p.incident_id = $1 ORDER BY p.id", incident_id)

    async def slack_thread(self, incident_id: int) -> Row | None:
        """The Slack thread the incident was placed in (and its role there), if the Slack sink runs."""
        async with self.db.read() as conn:
            return await conn.fetchrow(
                "SELECT t.channel, t.channel_id, t.ts, t.lead_incident_id, m.role, m.joined_at"
                " FROM slack_thread_incidents m JOIN slack_threads t ON t.id = m.thread_id"
                " WHERE m.incident_id = $1", incident_id)

    async def deliveries(self, incident_id: int) -> list[Row]:
        """The incident's sink jobs (events and Slack outbox rows): what was delivered, what waits, what failed."""
        async with self.db.read() as conn:
            return await conn.fetch(
                "SELECT id, queue, kind, status, attempts, last_error, created_at, finished_at FROM jobs"
                " WHERE incident_id = $1 AND queue LIKE 'sink:%' ORDER BY id", incident_id)
