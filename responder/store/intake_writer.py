"""Webhook deliveries, many at once: `record_batch` writes every delivery that queued up for one group
commit (see group_commit) with multi-row statements, a handful per batch whatever its size. Each
webhook is answered when the transaction that holds its alerts has committed.

An incident is a group of alerts, keyed by (source, rule, group key) through its `group_id`. A unique
index allows one open incident per group, so concurrent deliveries of a group (two replicas, re-sends)
find or open the same incident. Each alert of the group is a member, once per (fingerprint, startsAt);
the incident resolves when its last firing member does. An alert that is already a member of an open
incident of its rule stays there, whatever the rules say its group is now (rules changed, or an
incident of the previous release).

A batch is two rounds: what the database knows (the payloads stored, the alerts' memberships, the
groups' open incidents, ids for the alert rows), and every write that follows from it (the incidents it
opens, alerts, members, counts, jobs). On PostgreSQL each round is one statement (one round trip: the
statements of a round are CTEs of one); on SQLite, where a batch runs on the database's own thread, they
are statements one after another. Both run the same statements, prepared by the same code.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from responder.jobs import MEMBERS, PROCESS, RESOLVE, IncidentJob
from responder.models import Alert, AlertStatus, Delivery, DeliveryReceipt, Placement, common_labels
from responder.store.db import Connection, Row, Statement, StoreUnavailable

AlertKey = tuple[str, str, float]
MemberKey = tuple[int, str, float]
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
ALERT_TYPES = ("bigint", "bigint", "text", "text", "text", "text", "double precision", "double precision", "text",
               "text", "text", "double precision", "bigint")
# An incident to open: the batch's number for it (see record_batch), then its columns.
INCIDENT_TYPES = ("bigint", "text", "text", "double precision", "text", "text", "text", "double precision",
                  "double precision", "integer", "text", "text", "text", "bigint", "text", "text", "integer", "integer",
                  "double precision")
MEMBER_TYPES = ("bigint", "text", "text", "double precision", "text", "text", "text", "double precision",
                "double precision", "double precision")
END_TYPES = ("bigint", "text", "double precision", "integer")
# An incident a batch touched: id, deliveries, last alert id, members gained, change of members firing.
COUNT_TYPES = ("bigint", "integer", "bigint", "integer", "integer")
DUE_TYPES = ("bigint", "double precision")


def chunks(conn: Connection, items: Sequence[Any]) -> list[Sequence[Any]]:
    size = conn.rows_per_statement or max(1, len(items))
    return [items[i:i + size] for i in range(0, len(items), size)]


class _Args:
    """A statement's arguments as its text is built: each fragment takes the next placeholders."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.values: list[Any] = []

    def rows(self, rows: Sequence[Sequence[Any]], types: Sequence[str]) -> str:
        source, args = self.conn.rows_source(rows, types, first=len(self.values) + 1)
        self.values += args
        return source

    def one(self, value: Any, sql_type: str) -> str:
        self.values.append(value)
        return f"CAST(${len(self.values)} AS {sql_type})"

    def statement(self, sql: str) -> Statement:
        return sql, self.values


@dataclass(frozen=True, slots=True)
class Placed:
    """A delivery with the groups each of its alerts belongs to (computed before the transaction)."""

    delivery: Delivery
    placements: list[list[Placement]]


class _Row:
    """One delivered alert; `id` is its row's. Its labels and annotations are serialized once, for its
    alert row and its member row."""

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


@dataclass(frozen=True, slots=True)
class _Known:
    """An incident an alert is already a member of."""

    rule: str  # '' for none, LEGACY for an incident of the previous release
    group_id: str
    incident_id: int
    open: bool
    # This very firing (fingerprint and start) already resolved there.
    ended: bool


@dataclass
class _Writes:
    """Every write of a batch once its incidents are known, as rows (the same for both databases)."""

    now: float
    max_attempts: int
    alerts: list[tuple[Any, ...]]
    # Member rows: still firing after this batch, and already ended by a later alert of this batch.
    firing: list[tuple[Any, ...]]
    ended: list[tuple[Any, ...]]
    # What may end members stored before: (incident, fingerprint, start, 1 for a resolution).
    ends: list[tuple[int, str, float, int]]
    # Per incident open before this batch: id, deliveries, last alert id.
    touched: list[tuple[int, int, int]]
    # The incidents to open, with their counts (INCIDENT_TYPES), and when each one's processing is due.
    opening: list[tuple[Any, ...]]
    due: list[tuple[int, float]]
    # The member rows of this batch's alerts stored before it, as its first round found them.
    stored: set[MemberKey]


@dataclass
class _Written:
    """What the writes found: each incident's status once counted (one resolved by another writer since it
    was found is missing), the incidents whose members changed, and the ids of the incidents opened by their
    numbers in the batch (one another writer opened meanwhile is missing)."""

    statuses: dict[int, str]
    changed: set[int]
    opened: dict[int, int]


async def record_batch(conn: Connection, batch: Sequence[Placed], max_attempts: int) -> list[DeliveryReceipt]:
    now = time.time()
    deliveries = [p.delivery for p in batch]
    alerts = [a for d in deliveries for a in d.alerts]
    candidates = sorted({placement.group_id(alert.source) for placed in batch
                         for alert, placements in zip(placed.delivery.alerts, placed.placements, strict=True)
                         for placement in placements})
    keyed = [d for d in deliveries if d.dedup_key is not None]
    # The known dedup keys are read before this batch's payloads are inserted (on SQLite too), so both
    # databases see the same: a repeat within the batch is found below, by a query of its own.
    known_payloads, inserted, memberships, open_rows, id_rows = await _fetch_steps(conn, [
        _known_payloads_statements(conn, keyed), _insert_payloads_statements(conn, deliveries, now),
        _memberships_statements(conn, alerts), _open_incidents_statements(conn, candidates),
        [conn.reserve_ids("alerts", len(alerts))]])

    receipts: list[DeliveryReceipt | None] = [None] * len(batch)
    fresh: list[tuple[int, int, Placed]] = []
    known_ids = {(r["source"], r["dedup_key"]): int(r["id"]) for r in known_payloads}
    for index, (placed, payload_id) in enumerate(zip(batch, _payload_ids(deliveries, inserted), strict=True)):
        if payload_id is None:
            delivery = placed.delivery
            known = known_ids.get((delivery.source, delivery.dedup_key))
            if known is None:  # stored by this batch or by a concurrent one since the read above
                known = await conn.fetchval("SELECT id FROM payloads WHERE source = $1 AND dedup_key = $2",
                                            delivery.source, delivery.dedup_key)
            receipts[index] = DeliveryReceipt(int(known), len(delivery.alerts), 0, 0, duplicate=True)
        else:
            fresh.append((index, payload_id, placed))

    groups, rows = _place(fresh, _memberships(memberships))
    stored = {(int(r["id"]), str(r["fingerprint"]), float(r["member_starts_at"])) for r in memberships}
    incident_of_group = {str(r["group_id"]): int(r["id"]) for r in open_rows}
    for group in groups.values():
        if group.incident_id is None:
            group.incident_id = incident_of_group.get(group.group_id)
    # A group with a firing alert and no open incident gets one, opened by the writes; until then the rows
    # name it by a number of the batch's own, negative so that it is no incident's id.
    opening = sorted(g for g, group in groups.items()
                     if group.incident_id is None and group.firing and not g.startswith(LEGACY))
    for number, group_id in enumerate(opening, 1):
        groups[group_id].incident_id = -number
    for (_, row), alert_id in zip(rows, conn.reserved(id_rows, len(alerts)), strict=False):
        row.id = alert_id

    write = _write_at_once if conn.dialect == "postgres" else _write_in_steps
    for _ in range(len(opening) + 1):
        writes = _plan_writes(rows, groups, stored, now, max_attempts)
        written = await write(conn, writes)
        if len(written.opened) == len(writes.opening):
            break
        # Another writer opened some of these groups since the first round: the writes waited for it to
        # commit and wrote nothing but the other incidents. Those are given back, the groups it opened are
        # found, and the writes run again (each time with fewer groups to open: at most once per group).
        numbers = {group.incident_id: group for group in groups.values()}
        _, found = await _fetch_steps(conn, [
            _delete_incidents_statements(conn, sorted(written.opened.values())),
            _open_incidents_statements(conn, sorted(g.group_id for n, g in numbers.items()
                                                    if n is not None and n < 0 and n not in written.opened))])
        for r in found:
            groups[str(r["group_id"])].incident_id = int(r["id"])
    else:
        raise StoreUnavailable("groups kept being opened by other writers meanwhile; the batch runs again")
    # An incident found open that another writer resolved since the first round is not counted: this batch
    # runs again, and then opens the group anew if a member still fires.
    gone = {t[0] for t in writes.touched} - set(written.statuses)
    if gone:
        raise StoreUnavailable(f"incident(s) {sorted(gone)} resolved by another writer meanwhile; the batch"
                               " runs again")
    for group in groups.values():
        if group.incident_id is not None and group.incident_id < 0:
            group.incident_id = written.opened[group.incident_id]
    opened = set(written.opened.values())
    changed = written.changed
    resolved = {i for i, status in written.statuses.items() if status == "resolved"}

    placed_groups = [g for g in groups.values() if g.incident_id is not None]
    for index, payload_id, placed in fresh:
        mine = [g for g in placed_groups if index in g.deliveries]
        receipts[index] = DeliveryReceipt(
            payload_id, len(placed.delivery.alerts),
            opened=sum(1 for g in mine if g.incident_id in opened and min(g.deliveries) == index),
            resolved=sum(1 for g in mine if g.incident_id in resolved and max(g.deliveries) == index),
            updated=sum(1 for g in mine if g.incident_id in changed),
        )
    return [r for r in receipts if r is not None]


async def _fetch_steps(conn: Connection, steps: list[list[Statement]]) -> list[list[Row]]:
    """Each step's rows (a step is one statement per chunk of its rows), all steps at once."""
    results = await conn.fetch_each([statement for step in steps for statement in step])
    found: list[list[Row]] = []
    for step in steps:
        found.append([row for result in results[:len(step)] for row in result])
        results = results[len(step):]
    return found


def _known_payloads_statements(conn: Connection, keyed: list[Delivery]) -> list[Statement]:
    statements = []
    for part in chunks(conn, keyed):
        args = _Args(conn)
        source = args.rows([(d.source, d.dedup_key) for d in part], ("text", "text"))
        statements.append(args.statement(
            f"SELECT p.id, p.source, p.dedup_key FROM payloads p JOIN {source}"
            " ON p.source = v.column1 AND p.dedup_key = v.column2"))
    return statements


def _insert_payloads_statements(conn: Connection, deliveries: list[Delivery], now: float) -> list[Statement]:
    statements = []
    for part in chunks(conn, deliveries):
        args = _Args(conn)
        source = args.rows([(d.source, now, d.dedup_key, dumps(d.headers), d.body) for d in part], PAYLOAD_TYPES)
        statements.append(args.statement(
            f"INSERT INTO payloads (source, received_at, dedup_key, headers, body) SELECT * FROM {source} WHERE true"
            " ON CONFLICT (source, dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING RETURNING id, source, dedup_key"))
    return statements


def _payload_ids(deliveries: list[Delivery], returned: list[Row]) -> list[int | None]:
    """Payload ids in delivery order; None for a repeat of a known (source, dedup_key). Inserted rows get
    ascending ids in insertion order (RETURNING's order is not guaranteed); a skipped row is a known key."""
    inserted = sorted(int(r["id"]) for r in returned)
    new_keys = {(r["source"], r["dedup_key"]) for r in returned if r["dedup_key"] is not None}
    ids: list[int | None] = []
    position = 0
    for d in deliveries:
        key = (d.source, d.dedup_key)
        if d.dedup_key is None or key in new_keys:
            new_keys.discard(key)  # a second copy in the same batch is a repeat
            ids.append(inserted[position])
            position += 1
        else:
            ids.append(None)
    return ids


def _memberships_statements(conn: Connection, alerts: list[Alert]) -> list[Statement]:
    """Per alert, the incidents it is a member of. A resolution also finds the firing it ends when it
    names a later start (PagerDuty resolves by time)."""
    keys = sorted({(a.source, a.fingerprint, a.starts_at, int(a.status is AlertStatus.RESOLVED)) for a in alerts})
    statements = []
    for part in chunks(conn, keys):
        args = _Args(conn)
        source = args.rows(part, ("text", "text", "double precision", "integer"))
        statements.append(args.statement(
            "SELECT v.column1 AS source, v.column2 AS fingerprint, v.column3 AS starts_at, i.id, i.rule, i.group_id,"
            " i.status, m.status AS member_status, m.starts_at AS member_starts_at"
            f" FROM {source} JOIN incident_members m ON m.source = v.column1 AND m.fingerprint = v.column2"
            " AND (m.starts_at = v.column3 OR (v.column4 = 1 AND m.starts_at < v.column3))"
            " JOIN incidents i ON i.id = m.incident_id"))
    return statements


def _memberships(rows: list[Row]) -> dict[AlertKey, list[_Known]]:
    found: dict[AlertKey, list[_Known]] = {}
    for r in rows:
        group_id = str(r["group_id"])
        exact = float(r["member_starts_at"]) == float(r["starts_at"])
        found.setdefault((r["source"], r["fingerprint"], float(r["starts_at"])), []).append(_Known(
            LEGACY if group_id.startswith(LEGACY) else str(r["rule"] or ""), group_id, int(r["id"]),
            r["status"] == "open", exact and r["member_status"] == "resolved"))
    return found


def _open_incidents_statements(conn: Connection, group_ids: Sequence[str]) -> list[Statement]:
    """The open incident of each group (opened by an earlier delivery or another replica). Not locked here:
    the incident rows are locked just before they are counted, at the end of the batch (see _count_sql), so
    concurrent batches of one group (an Alertmanager HA pair, several writers or processes in a storm) wait
    for each other only from there to their commit, not through the whole batch."""
    statements = []
    for part in chunks(conn, group_ids):
        args = _Args(conn)
        source = args.rows([(g,) for g in part], ("text",))
        statements.append(args.statement(
            f"SELECT i.id, i.group_id FROM incidents i JOIN {source} ON i.group_id = v.column1"
            " WHERE i.status = 'open'"))
    return statements


def _delete_incidents_statements(conn: Connection, ids: Sequence[int]) -> list[Statement]:
    statements = []
    for part in chunks(conn, ids):
        args = _Args(conn)
        statements.append(args.statement(
            f"DELETE FROM incidents WHERE id IN (SELECT v.column1 FROM {args.rows([(i,) for i in part], ('bigint',))})"
            " RETURNING id"))
    return statements


def _place(fresh: list[tuple[int, int, Placed]], known: dict[AlertKey, list[_Known]]
           ) -> tuple[dict[str, _Group], list[tuple[int, _Row]]]:
    """Each alert into its groups, and every alert as a row to store (with its payload id), in batch order.
    One already a member of an open incident of its rule stays there; a late re-delivery of a firing that
    already resolved opens nothing."""
    groups: dict[str, _Group] = {}
    rows: list[tuple[int, _Row]] = []
    for index, payload_id, placed in fresh:
        for alert, placements in zip(placed.delivery.alerts, placed.placements, strict=True):
            row = _Row(alert)
            rows.append((payload_id, row))
            for placement in placements:
                mine = [k for k in known.get((alert.source, alert.fingerprint, alert.starts_at), [])
                        if k.rule in (placement.rule or "", LEGACY)]
                staying = next((k for k in mine if k.open), None)
                if staying is None and alert.status is AlertStatus.FIRING and any(k.ended for k in mine):
                    continue
                group_id = staying.group_id if staying else placement.group_id(alert.source)
                group = groups.setdefault(group_id, _Group(group_id, placement, alert.source))
                if staying:
                    group.incident_id = staying.incident_id
                group.rows.append(row)
                group.deliveries.add(index)
    return groups, rows


def _plan_writes(rows: list[tuple[int, _Row]], groups: dict[str, _Group], stored: set[MemberKey], now: float,
                 max_attempts: int) -> _Writes:
    """The alert rows (each naming its incident: the first, when its rules placed it in several), the member
    rows and what ends members, the incidents to count and those to open, with theirs counted here.

    Firing alerts become members (once per fingerprint and start). A member ends when this batch resolves
    it or brings a later start of its fingerprint (one whose resolution was never seen); members this batch
    adds and ends at once are stored ended, so that the statement ending the members stored before may
    run alongside the inserts (see _write_at_once) and never touches a row they write."""
    placed = [(g, g.incident_id) for g in groups.values() if g.incident_id is not None]
    incident_of: dict[int, int] = {}
    for group, incident in placed:
        for row in group.rows:
            incident_of.setdefault(id(row), incident)
    alert_rows = [(row.id, payload_id, a.source, a.fingerprint, a.status.value, a.name, a.starts_at, a.ends_at,
                   row.labels, row.annotations, dumps(alert_extra(a)), now, incident_of.get(id(row)))
                  for payload_id, row in rows for a in (row.alert,)]
    latest: dict[MemberKey, _Row] = {}
    ends: set[tuple[int, str, float, int]] = set()
    # Per incident and fingerprint: the latest start this batch names, and the starts it resolves.
    newest: dict[tuple[int, str], float] = {}
    resolutions: set[MemberKey] = set()
    for group, incident in placed:
        for row in group.rows:
            alert = row.alert
            resolution = alert.status is AlertStatus.RESOLVED
            ends.add((incident, alert.fingerprint, alert.starts_at, int(resolution)))
            key = (incident, alert.fingerprint, alert.starts_at)
            newest[key[:2]] = max(newest.get(key[:2], alert.starts_at), alert.starts_at)
            if resolution:
                resolutions.add(key)
            else:
                latest[key] = row
    firing: list[tuple[Any, ...]] = []
    ended: list[tuple[Any, ...]] = []
    # Members of each incident to open: (firing, total).
    members: dict[int, tuple[int, int]] = {}
    for key in sorted(latest):
        row = latest[key]
        over = key in resolutions or newest[key[:2]] > key[2]
        (ended if over else firing).append((key[0], row.alert.source, key[1], key[2], "resolved" if over else "firing",
                                            row.labels, row.annotations, now, now, now if over else None))
        if key[0] < 0:
            counts = members.get(key[0], (0, 0))
            members[key[0]] = (counts[0] + (not over), counts[1] + 1)
    # Opened in the order of their groups' ids, as every batch opens them: two batches that wait for each
    # other's groups then cannot each hold a group the other waits for.
    new = sorted(((g, incident) for g, incident in placed if incident < 0), key=lambda p: p[0].group_id)
    return _Writes(now, max_attempts, alert_rows, firing, ended, sorted(e for e in ends if e[0] > 0),
                   sorted((incident, len(g.rows), max(r.id for r in g.rows)) for g, incident in placed
                          if incident > 0),
                   [_incident_row(g, incident, members.get(incident, (0, 0)), now) for g, incident in new],
                   [(incident, now + g.placement.group_wait) for g, incident in new], stored)


def _incident_row(group: _Group, number: int, members: tuple[int, int], now: float) -> tuple[Any, ...]:
    """An incident to open (INCIDENT_TYPES), counted as the batch leaves it: named after its first firing
    alert, labelled with what its firing alerts share, resolved at once when none of its members fires."""
    alerts = [a for a in group.alerts if a.status is AlertStatus.FIRING]
    first = min(alerts, key=lambda a: a.starts_at)
    labels = common_labels([a.labels for a in alerts])
    firing, total = members
    return (number, group.source, first.fingerprint, first.starts_at, first.name,
            "open" if firing else "resolved", group.placement.rule, now, now, len(group.rows), dumps(labels),
            dumps(first.annotations), dumps(alert_extra(first)), max(r.id for r in group.rows),
            group.placement.group_key, group.group_id, firing, total, None if firing else now)


# The three kinds of job a batch queues share the pipeline's queue, so one statement queues any of them.
JOB_QUEUE = PROCESS.queue
assert MEMBERS.queue == RESOLVE.queue == JOB_QUEUE


def _insert_incidents_sql(source: str) -> str:
    """The incidents to open (`source`: INCIDENT_TYPES), each linked to its group's previous incident, if any.
    A group another writer opened meanwhile conflicts, and is not returned."""
    columns = ", ".join(f"v.column{i}" for i in range(2, len(INCIDENT_TYPES) + 1))
    return ("INSERT INTO incidents (source, fingerprint, starts_at, alertname, status, rule, opened_at, last_seen,"
            " deliveries, labels, annotations, extra, last_alert_id, group_key, group_id, members_firing,"
            " members_total, resolved_at, previous_id)"
            f" SELECT {columns}, (SELECT MAX(p.id) FROM incidents p WHERE p.group_id = v.column16)"
            f" FROM {source} WHERE true ON CONFLICT (group_id) WHERE status = 'open' DO NOTHING"
            " RETURNING id, group_id, status")


def _insert_alerts_sql(source: str) -> str:
    return ("INSERT INTO alerts (id, payload_id, source, fingerprint, status, alertname, starts_at, ends_at, labels,"
            f" annotations, extra, received_at, incident_id) SELECT * FROM {source} WHERE true")


def _insert_members_sql(source: str, *, firing: bool, returning: bool) -> str:
    """Members still firing are inserted, or a re-delivery updates them; members that end in this batch are
    inserted ended, or are left to _end_members_sql when stored before. `returning`: returns the incident of
    each row written and whether it was inserted (PostgreSQL says so itself: xmax is 0 for a new row
    version)."""
    # A member's status only goes from firing to resolved: a late re-delivery does not revive it.
    conflict = ("DO UPDATE SET annotations = excluded.annotations, last_seen = excluded.last_seen" if firing
                else "DO NOTHING")
    return ("INSERT INTO incident_members (incident_id, source, fingerprint, starts_at, status, labels, annotations,"
            f" first_seen, last_seen, resolved_at) SELECT * FROM {source} WHERE true"
            f" ON CONFLICT (incident_id, fingerprint, starts_at) {conflict}"
            + (" RETURNING incident_id, (xmax = 0) AS inserted" if returning else ""))


def _end_members_sql(source: str, now: str) -> str:
    """A resolution resolves its member, and a new start of a fingerprint ends its older firing that never
    said it resolved; returns the incident of each member ended."""
    # The start's test is a range and a filter, not (earlier OR the same and resolved), so that SQLite searches
    # the members' key for it instead of building an index over every member for each statement.
    return (f"UPDATE incident_members SET status = 'resolved', resolved_at = {now} FROM {source}"
            " WHERE incident_members.incident_id = v.column1 AND incident_members.fingerprint = v.column2"
            " AND incident_members.status = 'firing' AND incident_members.starts_at <= v.column3"
            " AND (incident_members.starts_at < v.column3 OR v.column4 = 1) RETURNING incident_members.incident_id")


def _count_sql(source: str, now: str) -> str:
    """Every touched incident's counts moved by what this batch changed (`source`: COUNT_TYPES), resolving
    those with no member left firing. The counts are exact whatever ran concurrently: each batch adds only
    the members its own statements inserted or ended. An incident resolved by another writer since it was
    found (its last member resolved, or by hand) is not updated, and not returned; the batch then runs
    again, and opens the group anew if a member still fires."""
    firing = "incidents.members_firing + v.column5"
    return (f"UPDATE incidents SET deliveries = incidents.deliveries + v.column2, last_seen = {now},"
            f" last_alert_id = v.column3, members_firing = {firing},"
            " members_total = incidents.members_total + v.column4,"
            f" status = CASE WHEN {firing} <= 0 THEN 'resolved' ELSE 'open' END,"
            f" resolved_at = CASE WHEN {firing} <= 0 THEN {now} END"
            f" FROM {source} WHERE incidents.id = v.column1 AND incidents.status = 'open'"
            " RETURNING incidents.id, incidents.status")


def _enqueue_sql(args: _Args, w: _Writes, source: str, now: str, *, unless_queued: bool = False) -> str:
    """The incidents' jobs, as `kind.new` would queue them; `source` has the kind's name, the incident and
    when the job is due as v.column1..3."""
    queue = args.one(JOB_QUEUE, "text")
    key = "'incident:' || CAST(v.column2 AS TEXT)"
    # The status test repeats the partial index's WHERE so that SQLite uses it (see queue.WAITING).
    only = (f" AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.queue = {queue} AND j.ordering_key = {key}"
            " AND j.kind = v.column1 AND j.status IN ('queued', 'running') AND j.status = 'queued')"
            if unless_queued else "")
    payload = args.one(dumps(IncidentJob().model_dump(mode="json")), "text")
    return ("INSERT INTO jobs (queue, kind, ordering_key, incident_id, payload, status, max_attempts, run_after,"
            f" created_at) SELECT {queue}, v.column1, {key}, v.column2, {payload}, 'queued',"
            f" {args.one(w.max_attempts, 'integer')}, v.column3, {now} FROM {source} WHERE true{only}")


def _named(rows: list[tuple[Any, ...]], index: int, opened: dict[int, int]) -> list[tuple[Any, ...]]:
    """Rows with the batch's numbers of incidents to open (at `index`) replaced by their ids."""
    return [row if row[index] is None or row[index] > 0 else (*row[:index], opened[row[index]], *row[index + 1:])
            for row in rows]


async def _write_in_steps(conn: Connection, w: _Writes) -> _Written:
    """The writes one statement after another (SQLite)."""
    number_of = {row[15]: row[0] for row in w.opening}
    opened: dict[int, int] = {}
    statuses: dict[int, str] = {}
    for part in chunks(conn, w.opening):
        args = _Args(conn)
        for r in await conn.fetch(_insert_incidents_sql(args.rows(part, INCIDENT_TYPES)), *args.values):
            opened[number_of[r["group_id"]]] = int(r["id"])
            statuses[int(r["id"])] = str(r["status"])
    if len(opened) < len(w.opening):
        return _Written(statuses, set(), opened)
    for part in chunks(conn, _named(w.alerts, 12, opened)):
        args = _Args(conn)
        await conn.execute(_insert_alerts_sql(args.rows(part, ALERT_TYPES)), *args.values)
    for rows, firing in ((w.firing, True), (w.ended, False)):
        for part in chunks(conn, _named(rows, 0, opened)):
            args = _Args(conn)
            await conn.execute(_insert_members_sql(args.rows(part, MEMBER_TYPES), firing=firing, returning=False),
                               *args.values)
    # The one writer holds the database from the first round to the commit, so a member row was inserted
    # exactly when the first round found none: no row per member comes back from SQLite to count them.
    new = [row for row in (*w.firing, *w.ended) if (row[0], row[2], row[3]) not in w.stored]
    gained = Counter(opened.get(row[0], row[0]) for row in new)
    ended = Counter(opened.get(row[0], row[0]) for row in new if row[4] == "resolved")
    for part in chunks(conn, w.ends):
        args = _Args(conn)
        now = args.one(w.now, "double precision")
        for r in await conn.fetch(_end_members_sql(args.rows(part, END_TYPES), now), *args.values):
            ended[int(r["incident_id"])] += 1
    counts = [(i, deliveries, last, gained.get(i, 0), gained.get(i, 0) - ended.get(i, 0))
              for i, deliveries, last in w.touched]
    for part in chunks(conn, counts):
        args = _Args(conn)
        now = args.one(w.now, "double precision")
        statuses |= {int(r["id"]): str(r["status"])
                     for r in await conn.fetch(_count_sql(args.rows(part, COUNT_TYPES), now), *args.values)}
    resolved = sorted(i for i, status in statuses.items() if status == "resolved")
    changed = set(gained) | set(ended)
    # Member changes of an incident already processed: one `members` job each, unless one is already
    # waiting (it reads the newest state when it runs).
    for jobs, unless_queued in (([(PROCESS.name, i, due) for i, due in _named(w.due, 0, opened)]
                                 + [(RESOLVE.name, i, w.now) for i in resolved], False),
                                ([(MEMBERS.name, i, w.now)
                                  for i in sorted(changed - set(opened.values()) - set(resolved))], True)):
        for part in chunks(conn, jobs):
            args = _Args(conn)
            source = args.rows(part, ("text", "bigint", "double precision"))
            now = args.one(w.now, "double precision")
            await conn.execute(_enqueue_sql(args, w, source, now, unless_queued=unless_queued), *args.values)
    return _Written(statuses, changed, opened)


async def _write_at_once(conn: Connection, w: _Writes) -> _Written:
    """The same writes as _write_in_steps as one statement (PostgreSQL): one round trip instead of one per
    statement. Its parts all see the database as it was before it, which the plan allows for (see
    _plan_writes); the members' and jobs' counts come from the rows the parts returned, and the rows name
    the incidents it opens through `opened_ids`. When another writer opened one of the groups to open
    meanwhile, it writes nothing but the other incidents (see record_batch).

    The incident rows are locked all at once and in id order (the order job completions update them in, see
    JobQueue.finish; the UPDATE itself may walk them in any order, and two batches did deadlock on it),
    after the member rows are written (the lock's query waits for `counts`, which waits for them), as
    concurrent batches take them. The lock is the one the UPDATE takes (FOR NO KEY UPDATE): FOR UPDATE
    would also wait for, and deadlock with, the key-share locks other batches' member rows hold on their
    incident through the foreign key."""
    args = _Args(conn)
    now = args.one(w.now, "double precision")

    def whole(rows: list[tuple[Any, ...]], types: Sequence[str], column: int | None = None) -> str:
        """`rows`, none of them when a group to open was opened by another writer meanwhile (`verdict`), with
        the numbers of incidents to open in `column` replaced by their ids."""
        names = [f"column{i}" for i in range(1, len(types) + 1)]
        columns = ", ".join(f"COALESCE(opened_ids.id, v.{name})" if i == column else f"v.{name}"
                            for i, name in enumerate(names, 1))
        join = f" LEFT JOIN opened_ids ON opened_ids.number = v.column{column}" if column else ""
        return (f"(SELECT {columns} FROM {args.rows(rows, types)}{join} WHERE (SELECT whole FROM verdict))"
                f" AS v ({', '.join(names)})")

    sql = (
        f"WITH opened AS ({_insert_incidents_sql(args.rows(w.opening, INCIDENT_TYPES))}),"
        f" verdict AS (SELECT COUNT(*) = {args.one(len(w.opening), 'bigint')} AS whole FROM opened),"
        " opened_ids AS (SELECT v.column1 AS number, opened.id, opened.status"
        f" FROM {args.rows([(row[0], row[15]) for row in w.opening], ('bigint', 'text'))}"
        " JOIN opened ON opened.group_id = v.column2),"
        f" new_alerts AS ({_insert_alerts_sql(whole(w.alerts, ALERT_TYPES, 13))}),"
        f" firing AS ({_insert_members_sql(whole(w.firing, MEMBER_TYPES, 1), firing=True, returning=True)}),"
        f" ended AS ({_insert_members_sql(whole(w.ended, MEMBER_TYPES, 1), firing=False, returning=True)}),"
        f" ends AS ({_end_members_sql(whole(w.ends, END_TYPES), now)}),"
        " changes AS (SELECT incident_id, SUM(gained) AS gained, SUM(ended) AS ended FROM ("
        "SELECT incident_id, CASE WHEN inserted THEN 1 ELSE 0 END AS gained, 0 AS ended FROM firing"
        " UNION ALL SELECT incident_id, 1, 1 FROM ended UNION ALL SELECT incident_id, 0, 1 FROM ends) AS c"
        " GROUP BY incident_id),"
        " counts AS (SELECT v.column1, v.column2, v.column3, COALESCE(c.gained, 0) AS column4,"
        " COALESCE(c.gained, 0) - COALESCE(c.ended, 0) AS column5, COALESCE(c.gained > 0 OR c.ended > 0, false)"
        f" AS changed FROM {whole(w.touched, COUNT_TYPES[:3])} LEFT JOIN changes c ON c.incident_id = v.column1),"
        " locked AS (SELECT i.id FROM incidents i WHERE i.id IN (SELECT column1 FROM counts) ORDER BY i.id"
        " FOR NO KEY UPDATE OF i),"
        f" counted AS ({_count_sql('counts AS v JOIN locked ON locked.id = v.column1', now)}),"
        # One statement for the opened incidents' jobs and the resolved ones', in that order (an incident
        # opened and resolved by this batch is processed first).
        " queued AS ("
        + _enqueue_sql(args, w, f"(SELECT {args.one(PROCESS.name, 'text')}, opened_ids.id, v.column2"
                                f" FROM {whole(w.due, DUE_TYPES)} JOIN opened_ids ON opened_ids.number = v.column1"
                                f" UNION ALL SELECT {args.one(RESOLVE.name, 'text')}, resolved.id, {now} FROM"
                                " (SELECT id, status FROM opened_ids WHERE (SELECT whole FROM verdict)"
                                " UNION ALL SELECT id, status FROM counted) AS resolved"
                                " WHERE resolved.status = 'resolved') AS v (column1, column2, column3)",
                       now)
        + "), changed AS ("
        + _enqueue_sql(args, w, f"(SELECT {args.one(MEMBERS.name, 'text')}, counts.column1, {now} FROM counts"
                                " JOIN counted ON counted.id = counts.column1 WHERE counts.changed"
                                " AND counted.status = 'open') AS v (column1, column2, column3)", now,
                       unless_queued=True)
        + ") SELECT counts.column1 AS id, counted.status, counts.changed, CAST(NULL AS bigint) AS number"
        " FROM counts LEFT JOIN counted ON counted.id = counts.column1"
        " UNION ALL SELECT id, status, true, number FROM opened_ids")
    rows = await conn.fetch(sql, *args.values)
    return _Written({int(r["id"]): str(r["status"]) for r in rows if r["status"] is not None},
                    {int(r["id"]) for r in rows if r["changed"]},
                    {int(r["number"]): int(r["id"]) for r in rows if r["number"] is not None})
