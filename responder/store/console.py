"""The console's state in the store: each button press (the audit), who acknowledged an incident, when its
diagnostics were last re-run, and the silences created for it in Alertmanager.

A press is recorded, with the job that handles it, before Slack is answered; its outcome is written when
the job finishes, in the transaction that also writes what the press changed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from responder.jobs import CLICK, ClickRef
from responder.store.db import Connection, Row
from responder.store.store import Store


@dataclass(frozen=True, slots=True)
class Click:
    id: int
    button: str
    permission: str
    value: int
    incident_id: int | None
    user_id: str
    user_name: str
    channel_id: str | None
    message_ts: str | None
    team_domain: str | None
    outcome: str
    detail: str


@dataclass(frozen=True, slots=True)
class Silence:
    id: int
    incident_id: int
    alertmanager: str
    silence_id: str
    matchers: dict[str, str]
    created_by: str
    starts_at: float
    ends_at: float


@dataclass(frozen=True, slots=True)
class ConsoleState:
    """What the parent message shows about an incident besides its alerts."""

    acknowledged_by: str | None = None
    acknowledged_at: float | None = None
    silence: Silence | None = None


def _click(row: Row) -> Click:
    return Click(int(row["id"]), row["button"], row["permission"], int(row["value"]), row["incident_id"],
                 row["user_id"], row["user_name"], row["channel_id"], row["message_ts"], row["team_domain"],
                 row["outcome"], row["detail"])


def _silence(row: Row) -> Silence:
    return Silence(int(row["id"]), int(row["incident_id"]), row["alertmanager"], row["silence_id"],
                   json.loads(row["matchers"]), row["created_by"], float(row["starts_at"]), float(row["ends_at"]))


class ConsoleStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    async def record_click(self, fields: dict[str, Any]) -> tuple[int, bool]:
        """Store a press and queue its job, once per `click_key`: (the click's id, whether it is new).
        `value` is an approval id for approve/deny, else an incident id."""
        now = time.time()
        fields = dict(fields)
        async with self.db.transaction() as conn:
            # A value naming nothing we know (an old message, a forged button) is stored without an incident.
            fields["incident_id"] = await conn.fetchval(
                "SELECT incident_id FROM approvals WHERE id = $1" if fields["permission"] == "approve"
                else "SELECT id FROM incidents WHERE id = $1", fields["value"])
            click_id = await conn.fetchval(
                "INSERT INTO slack_clicks (click_key, button, permission, value, incident_id, user_id, user_name,"
                " channel_id, message_ts, team_domain, outcome, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'queued', $11)"
                " ON CONFLICT (click_key) DO NOTHING RETURNING id",
                fields["click_key"], fields["button"], fields["permission"], str(fields["value"]),
                fields["incident_id"], fields["user_id"], fields["user_name"], fields["channel_id"],
                fields["message_ts"], fields["team_domain"], now)
            if click_id is None:
                return int(await conn.fetchval("SELECT id FROM slack_clicks WHERE click_key = $1",
                                               fields["click_key"])), False
            # One incident's presses are handled in order, apart from its Slack messages.
            key = f"console:incident:{fields['incident_id']}" if fields["incident_id"] else f"console:click:{click_id}"
            await self.store.queue.enqueue(conn, CLICK.new(key, ClickRef(click_id=int(click_id)),
                                                           incident_id=fields["incident_id"]))
        return int(click_id), True

    async def click(self, click_id: int) -> Click | None:
        async with self.db.read() as conn:
            row = await conn.fetchrow("SELECT * FROM slack_clicks WHERE id = $1", click_id)
        return _click(row) if row is not None else None

    async def clicks(self, incident_id: int | None = None, limit: int = 1000) -> list[Row]:
        async with self.db.read() as conn:
            return await conn.fetch(
                "SELECT * FROM slack_clicks WHERE ($1 = 0 OR incident_id = $1) ORDER BY id DESC LIMIT $2",
                incident_id or 0, limit)

    @staticmethod
    async def claim_click(conn: Connection, click_id: int) -> bool:
        """True for the one transaction that records this press's outcome."""
        return await conn.execute(
            "UPDATE slack_clicks SET outcome = 'handling' WHERE id = $1 AND outcome = 'queued'", click_id) == 1

    @staticmethod
    async def finish_click(conn: Connection, click_id: int, outcome: str, detail: str) -> None:
        await conn.execute(
            "UPDATE slack_clicks SET outcome = $2, detail = $3, finished_at = $4 WHERE id = $1",
            click_id, outcome, detail[:2000], time.time())

    # --- acknowledgements and re-runs -----------------------------------------------------------

    @staticmethod
    async def _ensure(conn: Connection, incident_id: int) -> None:
        await conn.execute("INSERT INTO incident_console (incident_id) VALUES ($1) ON CONFLICT DO NOTHING",
                           incident_id)

    @classmethod
    async def acknowledge(cls, conn: Connection, incident_id: int, user_id: str) -> tuple[bool, str, float]:
        """The first acknowledgement wins: (whether this one counted, who acknowledged, when)."""
        await cls._ensure(conn, incident_id)
        now = time.time()
        changed = await conn.execute(
            "UPDATE incident_console SET acknowledged_by = $2, acknowledged_at = $3"
            " WHERE incident_id = $1 AND acknowledged_by IS NULL", incident_id, user_id, now)
        row = await conn.fetchrow(
            "SELECT acknowledged_by, acknowledged_at FROM incident_console WHERE incident_id = $1", incident_id)
        assert row is not None
        return changed == 1, str(row["acknowledged_by"]), float(row["acknowledged_at"])

    @classmethod
    async def claim_rerun(cls, conn: Connection, incident_id: int, user_id: str, min_interval: float
                          ) -> tuple[bool, str | None, float | None]:
        """Take the incident's re-run slot unless the last re-run is more recent than `min_interval`:
        (whether it was taken, who ran the previous one, when)."""
        await cls._ensure(conn, incident_id)
        now = time.time()
        before = await conn.fetchrow(
            "SELECT rerun_by, rerun_at FROM incident_console WHERE incident_id = $1", incident_id)
        taken = await conn.execute(
            "UPDATE incident_console SET rerun_by = $2, rerun_at = $3"
            " WHERE incident_id = $1 AND (rerun_at IS NULL OR rerun_at <= $4)",
            incident_id, user_id, now, now - min_interval)
        assert before is not None
        return taken == 1, before["rerun_by"], before["rerun_at"]

    # --- silences -------------------------------------------------------------------------------

    async def active_silence(self, incident_id: int) -> Silence | None:
        async with self.db.read() as conn:
            return await self._active(conn, incident_id)

    @staticmethod
    async def _active(conn: Connection, incident_id: int) -> Silence | None:
        row = await conn.fetchrow(
            "SELECT * FROM silences WHERE incident_id = $1 AND expired_at IS NULL AND ends_at > $2"
            " ORDER BY id DESC LIMIT 1", incident_id, time.time())
        return _silence(row) if row is not None else None

    @staticmethod
    async def save_silence(conn: Connection, incident_id: int, alertmanager: str, silence_id: str,
                           matchers: dict[str, str], created_by: str, starts_at: float, ends_at: float,
                           click_id: int) -> None:
        # Extending a silence may give it a new id in Alertmanager: the row of the old one ends here.
        await conn.execute(
            "UPDATE silences SET expired_at = $2, expired_by = $3 WHERE incident_id = $1 AND expired_at IS NULL",
            incident_id, starts_at, created_by)
        await conn.execute(
            "INSERT INTO silences (incident_id, alertmanager, silence_id, matchers, created_by, starts_at, ends_at,"
            " click_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            incident_id, alertmanager, silence_id, json.dumps(matchers, sort_keys=True), created_by, starts_at,
            ends_at, click_id)

    @staticmethod
    async def end_silence(conn: Connection, silence_row: int, user_id: str) -> None:
        await conn.execute("UPDATE silences SET expired_at = $2, expired_by = $3 WHERE id = $1 AND expired_at IS NULL",
                           silence_row, time.time(), user_id)

    async def state(self, incident_id: int) -> ConsoleState:
        async with self.db.read() as conn:
            row = await conn.fetchrow(
                "SELECT acknowledged_by, acknowledged_at FROM incident_console WHERE incident_id = $1", incident_id)
            silence = await self._active(conn, incident_id)
        if row is None:
            return ConsoleState(silence=silence)
        return ConsoleState(row["acknowledged_by"], row["acknowledged_at"], silence)
