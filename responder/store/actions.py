"""The action audit as the guard uses it: reservations, approvals, settings, verification.

A decision is written BEFORE anything is changed: `reserve` asks the guard's policy (duplicate,
cooldown, budgets: responder/mitigations/budgets.py) through `AuditQueries` and inserts the decision's
row (`executing`, `pending`, `dry-run` or `skipped`) in one transaction, serialized across replicas (an
advisory lock on PostgreSQL, the single writer on SQLite). A job that runs again after a crash finds its
own `executing` row and does not act twice; cooldowns and budgets count it, so neither does anyone else.
The store answers the questions; what the answers mean is the policy's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from responder.jobs import APPROVAL_EXECUTE, APPROVAL_EXPIRE, ApprovalRef
from responder.store.db import Connection, Row
from responder.store.intake_writer import dumps
from responder.store.store import Store

KILL_SWITCH = "kill_switch"


@dataclass(frozen=True, slots=True)
class Reservation:
    action_id: int
    outcome: str
    guard: str | None = None
    reason: str = ""
    approval_id: int | None = None


def _in(values: tuple[str, ...], first: int) -> str:
    return "(" + ", ".join(f"${i}" for i in range(first, first + len(values))) + ")"


class AuditQueries:
    """What a policy may ask about earlier decisions, inside the caller's transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def earlier_decision(self, incident_id: int | None, rule: str, step: str, outcomes: tuple[str, ...]
                               ) -> int | None:
        """The first action of this incident's rule step with one of `outcomes`."""
        value = await self.conn.fetchval(
            "SELECT id FROM actions WHERE incident_id = $1 AND rule = $2 AND step = $3"
            f" AND outcome IN {_in(outcomes, 4)} ORDER BY id LIMIT 1",
            incident_id, rule, step, *outcomes,
        )
        return None if value is None else int(value)

    async def last_on_target(self, action: str, target: str, outcomes: tuple[str, ...]) -> Row | None:
        """The newest such action on the target: its id and created_at."""
        return await self.conn.fetchrow(
            f"SELECT id, created_at FROM actions WHERE action = $1 AND target = $2 AND outcome IN {_in(outcomes, 3)}"
            " ORDER BY created_at DESC LIMIT 1",
            action, target, *outcomes,
        )

    async def count_on_target(self, action: str, target: str, since: float, outcomes: tuple[str, ...]) -> int:
        return int(await self.conn.fetchval(
            f"SELECT COUNT(*) FROM actions WHERE action = $1 AND target = $2 AND created_at > $3"
            f" AND outcome IN {_in(outcomes, 4)}",
            action, target, since, *outcomes,
        ))

    async def count_all(self, since: float, outcomes: tuple[str, ...]) -> int:
        return int(await self.conn.fetchval(
            f"SELECT COUNT(*) FROM actions WHERE created_at > $1 AND outcome IN {_in(outcomes, 2)}",
            since, *outcomes,
        ))


# Given the audit and the time, a refusal (the deciding guard, why) or (None, "").
Policy = Callable[[AuditQueries, float], Awaitable[tuple[str | None, str]]]


class ActionStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    async def reserve(self, incident_id: int | None, rule: str, row: dict[str, Any], policy: Policy, *,
                      approval_timeout: float | None = None) -> Reservation:
        """Ask `policy`, then record the decision, atomically.

        `row` is the decision (step, action, target, mode, params, description); its outcome becomes
        `dry-run` in dry-run mode, `pending` when approval is needed, else `executing`, or `skipped`
        with the guard that refused it."""
        now = time.time()
        async with self.db.transaction() as conn:
            if self.db.dialect == "postgres":
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('responder-action-budgets'))")
            guard, reason = await policy(AuditQueries(conn), now)
            if guard is not None:
                outcome = "skipped"
            elif row["mode"] == "dry-run":
                outcome = "dry-run"
            else:
                outcome = "pending" if approval_timeout is not None else "executing"
            fields = dict(row, outcome=outcome, guard=guard, reason=reason or row.get("reason", ""), created_at=now,
                          finished_at=now if outcome in ("skipped", "dry-run") else None)
            action_id = await self.store.insert_action(conn, incident_id, rule, fields)
            approval_id = None
            if outcome == "pending" and approval_timeout is not None:
                approval_id = int(await conn.fetchval(
                    "INSERT INTO approvals (action_id, incident_id, state, requested_at, expires_at)"
                    " VALUES ($1, $2, 'pending', $3, $4) RETURNING id",
                    action_id, incident_id, now, now + approval_timeout,
                ))
                # Its own ordering key: the approval's execution must not queue behind this delayed job.
                await self.store.queue.enqueue(conn, APPROVAL_EXPIRE.new(
                    f"expiry:{approval_id}", ApprovalRef(approval_id=approval_id), incident_id=incident_id),
                    delay=approval_timeout)
        return Reservation(action_id, outcome, guard, fields["reason"], approval_id)

    async def check(self, policy: Policy) -> tuple[str | None, str]:
        """What `reserve` would hear from `policy` now, recording nothing (for explain)."""
        async with self.db.read() as conn:
            return await policy(AuditQueries(conn), time.time())

    async def record(self, incident_id: int | None, rule: str, row: dict[str, Any]) -> int:
        """A decision made without a reservation (refused by a guard before budgets were looked at)."""
        async with self.db.transaction() as conn:
            return await self.store.insert_action(conn, incident_id, rule, row)

    async def finish(self, action_id: int, outcome: str, *, output: dict[str, Any] | None = None, reason: str = "",
                     guard: str | None = None, actor: str | None = None) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE actions SET outcome = $2, output = $3, reason = $4, guard = COALESCE($5, guard),"
                " actor = COALESCE($6, actor), finished_at = $7 WHERE id = $1",
                action_id, outcome, dumps(output or {}), reason, guard, actor, time.time(),
            )

    async def get(self, action_id: int) -> Row | None:
        async with self.db.read() as conn:
            return await conn.fetchrow("SELECT * FROM actions WHERE id = $1", action_id)

    async def recent(self, incident_id: int | None = None, limit: int = 1000) -> list[Row]:
        async with self.db.read() as conn:
            return await conn.fetch(
                "SELECT a.*, p.id AS approval_id, p.state AS approval_state FROM actions a"
                " LEFT JOIN approvals p ON p.action_id = a.id"
                " WHERE ($1 = 0 OR a.incident_id = $1) ORDER BY a.id DESC LIMIT $2",
                incident_id or 0, limit,
            )

    # --- approvals ------------------------------------------------------------------------------

    async def decide_in(self, conn: Connection, approval_id: int, approve: bool, actor: str
                        ) -> tuple[str, bool, str]:
        """pending -> approved (queues the execution) or denied, within the caller's transaction. Returns
        the approval's state after the call, whether this call changed it, and the action's name; only a
        pending, unexpired approval changes."""
        now = time.time()
        state = "approved" if approve else "denied"
        row = await conn.fetchrow(
            "UPDATE approvals SET state = $2, decided_at = $3, decided_by = $4"
            " WHERE id = $1 AND state = 'pending' AND expires_at > $3 RETURNING action_id, incident_id",
            approval_id, state, now, actor,
        )
        if row is None:
            current = await conn.fetchrow(
                "SELECT p.state, a.action FROM approvals p JOIN actions a ON a.id = p.action_id WHERE p.id = $1",
                approval_id,
            )
            return (str(current["state"]), False, str(current["action"])) if current else ("unknown", False, "")
        action = await conn.fetchval(
            "UPDATE actions SET outcome = $2, actor = $3, reason = $4, finished_at = $5 WHERE id = $1"
            " RETURNING action",
            row["action_id"], state, actor, f"{state} by {actor}", None if approve else now,
        )
        if approve:
            await self.store.queue.enqueue(conn, APPROVAL_EXECUTE.new(
                f"approval:{approval_id}", ApprovalRef(approval_id=approval_id), incident_id=row["incident_id"]))
        return state, True, str(action)

    @staticmethod
    async def expire(conn: Connection, approval_id: int) -> str | None:
        """pending -> expired, within the caller's transaction; the action's name when this call expired it."""
        now = time.time()
        action_id = await conn.fetchval(
            "UPDATE approvals SET state = 'expired', decided_at = $2 WHERE id = $1 AND state = 'pending'"
            " RETURNING action_id",
            approval_id, now,
        )
        if action_id is None:
            return None
        action = await conn.fetchval(
            "UPDATE actions SET outcome = 'expired', guard = 'approval', reason = 'nobody answered in time',"
            " finished_at = $2 WHERE id = $1 RETURNING action",
            action_id, now,
        )
        return str(action)

    async def start_approved(self, approval_id: int) -> Row | None:
        """approved -> executing, once: a second call (a re-run job) gets None and must not act."""
        async with self.db.transaction() as conn:
            action_id = await conn.fetchval(
                "UPDATE approvals SET state = 'executing' WHERE id = $1 AND state = 'approved' RETURNING action_id",
                approval_id,
            )
            if action_id is None:
                return None
            await conn.execute("UPDATE actions SET outcome = 'executing' WHERE id = $1", action_id)
            return await conn.fetchrow("SELECT * FROM actions WHERE id = $1", action_id)

    async def approval(self, approval_id: int) -> Row | None:
        async with self.db.read() as conn:
            return await conn.fetchrow("SELECT * FROM approvals WHERE id = $1", approval_id)

    async def remember_signature(self, signature: str, keep_seconds: float) -> bool:
        """True the first time a signature is seen; False for a replay."""
        now = time.time()
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM signed_requests WHERE received_at < $1", now - keep_seconds)
            inserted = await conn.fetchval(
                "INSERT INTO signed_requests (signature, received_at) VALUES ($1, $2)"
                " ON CONFLICT (signature) DO NOTHING RETURNING signature",
                signature, now,
            )
        return inserted is not None

    # --- settings (the kill switch) -------------------------------------------------------------

    async def set_setting(self, key: str, value: Any, actor: str) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO settings (key, value, updated_at, updated_by) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (key) DO UPDATE SET value = $2, updated_at = $3, updated_by = $4",
                key, json.dumps(value), time.time(), actor,
            )

    async def setting(self, key: str) -> Row | None:
        async with self.db.read() as conn:
            return await conn.fetchrow("SELECT * FROM settings WHERE key = $1", key)

    async def kill_switch(self) -> dict[str, Any] | None:
        """The stored kill switch, when it is on: {'reason', 'by', 'at'}."""
        row = await self.setting(KILL_SWITCH)
        if row is None:
            return None
        value = json.loads(row["value"])
        if not value.get("enabled"):
            return None
        return {"reason": value.get("reason", ""), "by": row["updated_by"], "at": row["updated_at"]}

    # --- verification ---------------------------------------------------------------------------

    async def record_verification(self, action_id: int, recovered: bool, detail: str) -> None:
        now = time.time()
        async with self.db.transaction() as conn:
            incident_id = await conn.fetchval(
                "UPDATE actions SET verification = $2, verified_at = $3 WHERE id = $1 RETURNING incident_id",
                action_id, dumps({"recovered": recovered, "detail": detail}), now,
            )
            if not recovered and incident_id is not None:
                await conn.execute(
                    "UPDATE incidents SET escalation = $2 WHERE id = $1",
                    incident_id, f"action {action_id} did not help: {detail}",
                )
