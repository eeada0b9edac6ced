"""Webhook deliveries, many at once: `record_batch` writes every delivery that queued up for one group
commit (see group_commit) with multi-row statements, a handful per batch whatever its size. Each
webhook is answered when the transaction that holds its alerts has committed.

An incident is a group of alerts, keyed by (source, rule, group key) through its `group_id`. A unique
index allows one open incident per group, so concurrent deliveries of a group (two replicas, re-sends)
find or open the same incident. Each alert of the group is a member, once per (fingerprint, startsAt);
the incident resolves when its last firing member does. An alert that is already a member of an open
incident of its rule stays there, whatever the rules say its group is now (rules changed, or an
incident of the previous release).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from responder.jobs import MEMBERS, PROCESS, RESOLVE, IncidentJob, JobKind
from responder.models import Alert, AlertStatus, Delivery, DeliveryReceipt, Placement, common_labels
from responder.store.db import Connection, StoreUnavailable

AlertKey = tuple[str, str, float]
# Rows per multi-row statement: well below SQLite's 32766 bound parameters for our widest table.
CHUNK = 400
LEGACY = "legacy:"


def dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str).decode()


def alert_extra(alert: Alert) -> dict[str, Any]:
    extra = dict(alert.extra)
    if alert.generator_url:
        extra["generator_url"] = alert.generator_url
    if alert.group_key:
        extra["group_key"] = alert.group_key
    return extra


PAYLOAD_TYPES = ("text", "double precision", "text", "text", "bytea")
ALERT_TYPES = ("bigint", "text", "text", "text", "text", "double precision", "double precision", "text", "text", "text",
               "double precision", "bigint")
INCIDENT_TYPES = ("text", "text", "double precision", "text", "text", "text", "double precision", "double precision",
                  "integer", "text", "text", "text", "bigint", "text", "text")
MEMBER_TYPES = ("bigint", "text", "text", "double precision", "text", "text", "text", "double precision",
                "double precision")
JOB_TYPES = ("text", "text", "text", "bigint", "text", "text", "integer", "double precision", "double precision")


def chunks(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]


@dataclass(frozen=True, slots=True)
class Placed:
    """A delivery with the groups each of its alerts belongs to (computed before the transaction)."""

    delivery: Delivery
    placements: list[list[Placement]]


class _Row:
    """One delivered alert; `id` is its row once stored. Its labels and annotations are serialized once, for
    its alert row and its member row."""

    __slots__ = ("alert", "annotations", "id", "labels")

    def __init__(self, alert: Alert) -> None:
        self.alert = alert
        self.id = 0
        self.labels = dumps(alert.labels)
        self.annotations = dumps(alert.annotations)


@dataclass
class _Group:
    """What a batch says about one group."""

    group_id: str
    placement: Placement
    source: str
    rows: list[_Row] = field(default_factory=list)
    deliveries: set[int] = field(default_factory=set)
    incident_id: int | None = None

    @property
    def alerts(self) -> list[Alert]:
        return [r.alert for r in self.rows]

    @property
    def firing(self) -> bool:
        return any(r.alert.status is AlertStatus.FIRING for r in self.rows)


async def record_batch(conn: Connection, batch: Sequence[Placed], max_attempts: int) -> list[DeliveryReceipt]:
    now = time.time()
    receipts: list[DeliveryReceipt | None] = [None] * len(batch)
    fresh: list[tuple[int, int, Placed]] = []
    deliveries = [p.delivery for p in batch]
    for index, (placed, payload_id) in enumerate(zip(batch, await _insert_payloads(conn, deliveries, now),
                                                     strict=True)):
        if payload_id is None:
            delivery = placed.delivery
            known = await conn.fetchval("SELECT id FROM payloads WHERE source = $1 AND dedup_key = $2",
                                        delivery.source, delivery.dedup_key)
            receipts[index] = DeliveryReceipt(int(known), len(delivery.alerts), 0, 0, duplicate=True)
        else:
            fresh.append((index, payload_id, placed))

    groups, rows = await _place(conn, fresh)
    opened = await _open_or_find(conn, groups, now)
    # The alerts are stored once their incidents are known, so each row names its incident as it is written.
    await _insert_alerts(conn, rows, groups, now)
    gained = await _upsert_members(conn, groups, now)
    ended = await _resolve_members(conn, groups, now)
    changed = set(gained) | set(ended)
    resolved = await _count_members(conn, groups, gained, ended, now)
    placed_groups = [g for g in groups.values() if g.incident_id is not None]
    await _enqueue(conn, [(PROCESS, g.incident_id, now + g.placement.group_wait) for g in placed_groups
                          if g.incident_id in opened]
                   + [(RESOLVE, i, now) for i in sorted(resolved)], max_attempts)
    # Member changes of an incident already processed: one `members` job each, unless one is already
    # waiting (it reads the newest state when it runs).
    await _enqueue(conn, [(MEMBERS, i, now) for i in sorted(changed - opened - resolved)], max_attempts,
                   unless_queued=True)

    for index, payload_id, placed in fresh:
        mine = [g for g in placed_groups if index in g.deliveries]
        receipts[index] = DeliveryReceipt(
            payload_id, len(placed.delivery.alerts),
            opened=sum(1 for g in mine if g.incident_id in opened and min(g.deliveries) == index),
            resolved=sum(1 for g in mine if g.incident_id in resolved and max(g.deliveries) == index),
            updated=sum(1 for g in mine if g.incident_id in changed),
        )
    return [r for r in receipts if r is not None]


async def _insert_payloads(conn: Connection, deliveries: Sequence[Delivery], now: float) -> list[int | None]:
    """Payload ids in delivery order; None for a repeat of a known (source, dedup_key)."""
    ids: list[int | None] = []
    for part in chunks(deliveries):
        rows = [(d.source, now, d.dedup_key, dumps(d.headers), d.body) for d in part]
        source, args = conn.rows_source(rows, PAYLOAD_TYPES)
        returned = await conn.fetch(
            f"INSERT INTO payloads (source, received_at, dedup_key, headers, body) SELECT * FROM {source} WHERE true"
            " ON CONFLICT (source, dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING RETURNING id, source, dedup_key",
            *args)
        # Inserted rows get ascending ids in insertion order; a skipped row is a known dedup key.
        inserted = sorted(int(r["id"]) for r in returned)
        new_keys = {(r["source"], r["dedup_key"]) for r in returned if r["dedup_key"] is not None}
        position = 0
        for d in part:
            key = (d.source, d.dedup_key)
            if d.dedup_key is None or key in new_keys:
                new_keys.discard(key)  # a second copy in the same batch is a repeat
                ids.append(inserted[position])
                position += 1
            else:
                ids.append(None)
    return ids


async def _insert_alerts(conn: Connection, rows: list[tuple[int, _Row]], groups: dict[str, _Group],
                         now: float) -> None:
    """Every alert as delivered (for replay and export), in batch order, with its payload id, naming its
    incident (the first, when its rules placed it in several); each row learns its id."""
    incident_of: dict[int, int] = {}
    for group in groups.values():
        if group.incident_id is not None:
            for row in group.rows:
                incident_of.setdefault(id(row), group.incident_id)
    values = [(payload_id, a.source, a.fingerprint, a.status.value, a.name, a.starts_at, a.ends_at, row.labels,
               row.annotations, dumps(alert_extra(a)), now, incident_of.get(id(row)))
              for payload_id, row in rows for a in (row.alert,)]
    ids: list[int] = []
    for part in chunks(values):
        source, args = conn.rows_source(part, ALERT_TYPES)
        # RETURNING order is not guaranteed, so ids are matched back by sorting (they ascend in insert order).
        returned = await conn.fetch(
            "INSERT INTO alerts (payload_id, source, fingerprint, status, alertname, starts_at, ends_at, labels,"
            f" annotations, extra, received_at, incident_id) SELECT * FROM {source} WHERE true RETURNING id", *args)
        ids += sorted(int(r["id"]) for r in returned)
    for (_, row), alert_id in zip(rows, ids, strict=True):
        row.id = alert_id


@dataclass(frozen=True, slots=True)
class _Known:
    """An incident an alert is already a member of."""

    rule: str  # '' for none, LEGACY for an incident of the previous release
    group_id: str
    open: bool
    # This very firing (fingerprint and start) already resolved there.
    ended: bool


async def _place(conn: Connection, fresh: list[tuple[int, int, Placed]]
                 ) -> tuple[dict[str, _Group], list[tuple[int, _Row]]]:
    """Each alert into its groups, and every alert as a row to store (with its payload id), in batch order.
    One already a member of an open incident of its rule stays there; a late re-delivery of a firing that
    already resolved opens nothing."""
    flat = [(index, payload_id, alert, placements) for index, payload_id, placed in fresh
            for alert, placements in zip(placed.delivery.alerts, placed.placements, strict=True)]
    known = await _memberships(conn, [alert for _, _, alert, _ in flat])
    groups: dict[str, _Group] = {}
    rows: list[tuple[int, _Row]] = []
    for index, payload_id, alert, placements in flat:
        row = _Row(alert)
        rows.append((payload_id, row))
        for placement in placements:
            mine = [k for k in known.get((alert.source, alert.fingerprint, alert.starts_at), [])
                    if k.rule in (placement.rule or "", LEGACY)]
            staying = next((k.group_id for k in mine if k.open), None)
            if staying is None and alert.status is AlertStatus.FIRING and any(k.ended for k in mine):
                continue
            group_id = staying or placement.group_id(alert.source)
            group = groups.setdefault(group_id, _Group(group_id, placement, alert.source))
            group.rows.append(row)
            group.deliveries.add(index)
    return groups, rows


async def _memberships(conn: Connection, alerts: list[Alert]) -> dict[AlertKey, list[_Known]]:
    """Per alert, the incidents it is a member of. A resolution also finds the firing it ends when it
    names a later start (PagerDuty resolves by time)."""
    keys = sorted({(a.source, a.fingerprint, a.starts_at, int(a.status is AlertStatus.RESOLVED)) for a in alerts})
    found: dict[AlertKey, list[_Known]] = {}
    for part in chunks(keys):
        source, args = conn.rows_source(part, ("text", "text", "double precision", "integer"))
        rows = await conn.fetch(
            "SELECT v.column1 AS source, v.column2 AS fingerprint, v.column3 AS starts_at, i.rule, i.group_id,"
            " i.status, m.status AS member_status, m.starts_at AS member_starts_at"
            f" FROM {source} JOIN incident_members m ON m.source = v.column1 AND m.fingerprint = v.column2"
            " AND (m.starts_at = v.column3 OR (v.column4 = 1 AND m.starts_at < v.column3))"
            " JOIN incidents i ON i.id = m.incident_id", *args)
        for r in rows:
            group_id = str(r["group_id"])
            exact = float(r["member_starts_at"]) == float(r["starts_at"])
            found.setdefault((r["source"], r["fingerprint"], float(r["starts_at"])), []).append(_Known(
                LEGACY if group_id.startswith(LEGACY) else str(r["rule"] or ""), group_id, r["status"] == "open",
                exact and r["member_status"] == "resolved"))
    return found


async def _open_incidents(conn: Connection, groups: dict[str, _Group], now: float) -> set[int]:
    """A new incident for each group with a firing alert and no open incident (linked to the group's
    previous incident, if any); the groups opened here learn their incident."""
    firing = sorted(g for g, group in groups.items() if group.firing and not g.startswith(LEGACY))
    opened: set[int] = set()
    for part in chunks(firing):
        rows = []
        for group_id in part:
            group = groups[group_id]
            alerts = [a for a in group.alerts if a.status is AlertStatus.FIRING]
            first = min(alerts, key=lambda a: a.starts_at)
            labels = common_labels([a.labels for a in alerts])
            rows.append((group.source, first.fingerprint, first.starts_at, first.name, "open", group.placement.rule,
                         now, now, 0, dumps(labels), dumps(first.annotations), dumps(alert_extra(first)), 0,
                         group.placement.group_key, group_id))
        source, args = conn.rows_source(rows, INCIDENT_TYPES)
        columns = ", ".join(f"v.column{i + 1}" for i in range(len(INCIDENT_TYPES)))
        returned = await conn.fetch(
            "INSERT INTO incidents (source, fingerprint, starts_at, alertname, status, rule, opened_at, last_seen,"
            " deliveries, labels, annotations, extra, last_alert_id, group_key, group_id, previous_id)"
            f" SELECT {columns}, (SELECT MAX(p.id) FROM incidents p WHERE p.group_id = v.column15)"
            f" FROM {source} WHERE true ON CONFLICT (group_id) WHERE status = 'open' DO NOTHING RETURNING id, group_id",
            *args)
        for r in returned:
            groups[r["group_id"]].incident_id = int(r["id"])
            opened.add(int(r["id"]))
    return opened


async def _find_incidents(conn: Connection, groups: dict[str, _Group]) -> None:
    """The open incident of each group (opened by an earlier delivery or another replica). Not locked here:
    the incident rows are locked just before they are counted, at the end of the batch (see _count_members),
    so concurrent batches of one group (an Alertmanager HA pair, several writers or processes in a storm)
    wait for each other only from there to their commit, not through the whole batch."""
    for part in chunks(sorted(groups)):
        source, args = conn.rows_source([(g,) for g in part], ("text",))
        rows = await conn.fetch(
            f"SELECT i.id, i.group_id FROM incidents i JOIN {source} ON i.group_id = v.column1"
            " WHERE i.status = 'open'", *args)
        for r in rows:
            groups[r["group_id"]].incident_id = int(r["id"])


async def _open_or_find(conn: Connection, groups: dict[str, _Group], now: float) -> set[int]:
    """Every group with a firing alert gets its open incident; returns the ones opened here. The open
    ones are found first: in a storm most deliveries join an incident, and then this is one statement.
    A group opened by another replica meanwhile (its insert conflicts) is found after it commits, and one
    whose incident another replica resolved while this batch waited for it is opened again."""
    await _find_incidents(conn, groups)
    opened: set[int] = set()
    for _ in range(2):
        missing = {g: group for g, group in groups.items() if group.incident_id is None and group.firing}
        if not missing:
            break
        opened |= await _open_incidents(conn, missing, now)
        await _find_incidents(conn, {g: group for g, group in missing.items() if group.incident_id is None})
    return opened


async def _upsert_members(conn: Connection, groups: dict[str, _Group], now: float) -> dict[int, int]:
    """Firing alerts become members (once per fingerprint and start); per incident, the members it gained."""
    latest: dict[tuple[int, str, float], _Row] = {}
    for group in groups.values():
        if group.incident_id is None:
            continue
        for row in group.rows:
            if row.alert.status is AlertStatus.FIRING:
                latest[(group.incident_id, row.alert.fingerprint, row.alert.starts_at)] = row
    # Whether each row was inserted (not updated) by this statement: PostgreSQL says so itself (xmax is 0 for
    # a new row version); on SQLite, whose one writer runs one batch at a time, a first_seen of this
    # batch's `now` was written by this batch.
    postgres = conn.dialect == "postgres"
    inserted = "(xmax = 0)" if postgres else "first_seen"
    gained: dict[int, int] = {}
    for part in chunks(sorted(latest)):
        rows = [(key[0], latest[key].alert.source, key[1], key[2], "firing", latest[key].labels,
                 latest[key].annotations, now, now) for key in part]
        source, args = conn.rows_source(rows, MEMBER_TYPES)
        returned = await conn.fetch(
            "INSERT INTO incident_members (incident_id, source, fingerprint, starts_at, status, labels, annotations,"
            f" first_seen, last_seen) SELECT * FROM {source} WHERE true"
            # A member's status only goes from firing to resolved: a late re-delivery does not revive it.
            " ON CONFLICT (incident_id, fingerprint, starts_at) DO UPDATE SET"
            " annotations = excluded.annotations, last_seen = excluded.last_seen"
            f" RETURNING incident_id, {inserted} AS inserted", *args)
        for r in returned:
            if (r["inserted"] if postgres else float(r["inserted"]) == now):
                gained[int(r["incident_id"])] = gained.get(int(r["incident_id"]), 0) + 1
    return gained


async def _resolve_members(conn: Connection, groups: dict[str, _Group], now: float) -> dict[int, int]:
    """A resolution resolves its member, and a new start of a fingerprint ends its older firing that
    never said it resolved; per incident, the members that resolved."""
    rows = sorted({(g.incident_id, a.fingerprint, a.starts_at, int(a.status is AlertStatus.RESOLVED))
                   for g in groups.values() if g.incident_id is not None for a in g.alerts})
    ended: dict[int, int] = {}
    for part in chunks(rows):
        source, args = conn.rows_source(part, ("bigint", "text", "double precision", "integer"))
        returned = await conn.fetch(
            f"UPDATE incident_members SET status = 'resolved', resolved_at = ${len(args) + 1} FROM {source}"
            " WHERE incident_members.incident_id = v.column1 AND incident_members.fingerprint = v.column2"
            " AND incident_members.status = 'firing' AND (incident_members.starts_at < v.column3"
            " OR (v.column4 = 1 AND incident_members.starts_at = v.column3)) RETURNING incident_members.incident_id",
            *args, now)
        for r in returned:
            ended[int(r["incident_id"])] = ended.get(int(r["incident_id"]), 0) + 1
    return ended


async def _count_members(conn: Connection, groups: dict[str, _Group], gained: dict[int, int],
                         ended: dict[int, int], now: float) -> set[int]:
    """Every touched incident's counts moved by what this batch changed, resolving those with no member left
    firing; returns the resolved. On PostgreSQL the incident rows are locked first, all at once and in id
    order (the order job completions update them in, see JobQueue.finish; the UPDATE itself may walk them in
    any order, and two batches did deadlock on it), until the batch commits. The lock is the one the UPDATE
    takes (FOR NO KEY UPDATE): FOR UPDATE would also wait for, and deadlock with, the key-share locks other
    batches' member rows hold on their incident through the foreign key. The counts are exact whatever
    ran concurrently: each batch adds only the members its own statements inserted or resolved. An incident
    resolved by another writer since it was found (its last member resolved, or by hand) is not updated; the
    batch then runs again, and opens the group anew if a member still fires."""
    touched = sorted({g.incident_id for g in groups.values() if g.incident_id is not None})
    if conn.dialect == "postgres":
        for part in chunks(touched):
            source, args = conn.rows_source([(i,) for i in part], ("bigint",))
            await conn.fetch(f"SELECT i.id FROM incidents i JOIN {source} ON i.id = v.column1"
                             " ORDER BY i.id FOR NO KEY UPDATE OF i", *args)
    rows = sorted((g.incident_id, len(g.rows), max(r.id for r in g.rows), gained.get(g.incident_id, 0),
                   gained.get(g.incident_id, 0) - ended.get(g.incident_id, 0))
                  for g in groups.values() if g.incident_id is not None)
    firing = "incidents.members_firing + v.column5"
    resolved: set[int] = set()
    for part in chunks(rows):
        source, args = conn.rows_source(part, ("bigint", "integer", "bigint", "integer", "integer"))
        returned = await conn.fetch(
            f"UPDATE incidents SET deliveries = incidents.deliveries + v.column2, last_seen = ${len(args) + 1},"
            f" last_alert_id = v.column3, members_firing = {firing},"
            " members_total = incidents.members_total + v.column4,"
            f" status = CASE WHEN {firing} <= 0 THEN 'resolved' ELSE 'open' END,"
            f" resolved_at = CASE WHEN {firing} <= 0 THEN CAST(${len(args) + 1} AS DOUBLE PRECISION) END"
            f" FROM {source} WHERE incidents.id = v.column1 AND incidents.status = 'open'"
            " RETURNING incidents.id, incidents.status", *args, now)
        resolved |= {int(r["id"]) for r in returned if r["status"] == "resolved"}
        gone = {row[0] for row in part} - {int(r["id"]) for r in returned}
        if gone:
            raise StoreUnavailable(f"incident(s) {sorted(gone)} resolved by another writer meanwhile; the batch"
                                   " runs again")
    return resolved


async def _enqueue(conn: Connection, jobs: Sequence[tuple[JobKind[IncidentJob], int | None, float]],
                   max_attempts: int, *, unless_queued: bool = False) -> None:
    """The incidents' jobs, as `kind.new` would queue them, in multi-row statements, each due at its time."""
    now = time.time()
    payload = dumps(IncidentJob().model_dump(mode="json"))
    # The status test repeats the partial index's WHERE so that SQLite uses it (see queue.WAITING).
    only = (" WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.queue = v.column1 AND j.ordering_key = v.column3"
            " AND j.kind = v.column2 AND j.status IN ('queued', 'running') AND j.status = 'queued')"
            if unless_queued else " WHERE true")
    for part in chunks(jobs):
        rows = [(kind.queue, kind.name, f"incident:{incident_id}", incident_id, payload, "queued", max_attempts,
                 run_after, now) for kind, incident_id, run_after in part]
        source, args = conn.rows_source(rows, JOB_TYPES)
        await conn.execute(
            "INSERT INTO jobs (queue, kind, ordering_key, incident_id, payload, status, max_attempts, run_after,"
            f" created_at) SELECT * FROM {source}{only}", *args)
