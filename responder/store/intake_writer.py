"""Webhook deliveries, many at once: `record_batch` writes every delivery that queued up for one group
commit (see group_commit) with multi-row statements, a handful per batch whatever its size. Each
webhook is answered when the transaction that holds its alerts has committed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from responder.jobs import PROCESS, RESOLVE, IncidentJob, JobKind
from responder.models import Alert, AlertStatus, Delivery, DeliveryReceipt
from responder.store.db import Connection

Key = tuple[str, str, float]
# Rows per multi-row statement: well below SQLite's 32766 bound parameters for our widest table.
CHUNK = 400


def dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str).decode()


def alert_extra(alert: Alert) -> dict[str, Any]:
    extra = dict(alert.extra)
    if alert.generator_url:
        extra["generator_url"] = alert.generator_url
    if alert.group_key:
        extra["group_key"] = alert.group_key
    return extra


KEY_TYPES = ("text", "text", "double precision")
PAYLOAD_TYPES = ("text", "double precision", "text", "text", "bytea")
ALERT_TYPES = ("bigint", "text", "text", "text", "text", "double precision", "double precision", "text", "text", "text",
               "double precision")
INCIDENT_TYPES = (*KEY_TYPES, "text", "text", "double precision", "double precision", "integer", "text", "text", "text",
                  "bigint")
JOB_TYPES = ("text", "text", "text", "bigint", "text", "text", "integer", "double precision", "double precision")


def chunks(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]


@dataclass
class _Seen:
    """What a batch says about one incident key."""

    alert: Alert
    alert_id: int
    # labels, annotations and extra as stored, serialized once per alert
    encoded: tuple[str, str, str]
    count: int = 0
    firing: bool = False
    resolved: bool = False
    delivery: int = 0


async def record_batch(conn: Connection, deliveries: Sequence[Delivery], max_attempts: int) -> list[DeliveryReceipt]:
    now = time.time()
    receipts: list[DeliveryReceipt | None] = [None] * len(deliveries)
    fresh: list[tuple[int, int, Delivery]] = []
    for index, (delivery, payload_id) in enumerate(zip(deliveries, await _insert_payloads(conn, deliveries, now),
                                                       strict=True)):
        if payload_id is None:
            known = await conn.fetchval("SELECT id FROM payloads WHERE source = $1 AND dedup_key = $2",
                                        delivery.source, delivery.dedup_key)
            receipts[index] = DeliveryReceipt(int(known), len(delivery.alerts), 0, 0, duplicate=True)
        else:
            fresh.append((index, payload_id, delivery))

    seen = await _insert_alerts(conn, fresh, now)
    await _lock_incidents(conn, seen)
    opened = await _open_incidents(conn, seen, now)
    resolved = await _resolve_incidents(conn, seen, now)
    await _touch_incidents(conn, [k for k, s in seen.items() if k not in opened], seen, now)
    await _enqueue(conn, [(PROCESS, i) for i in opened.values()] + [(RESOLVE, i) for i in resolved.values()],
                   now, max_attempts)
    await _link_alerts(conn, [pid for _, pid, _ in fresh])

    for index, payload_id, delivery in fresh:
        receipts[index] = DeliveryReceipt(
            payload_id, len(delivery.alerts),
            opened=sum(1 for k in opened if seen[k].delivery == index),
            resolved=sum(1 for k in resolved if seen[k].delivery == index),
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


async def _insert_alerts(conn: Connection, fresh: list[tuple[int, int, Delivery]], now: float) -> dict[Key, _Seen]:
    flat = [(index, payload_id, alert) for index, payload_id, delivery in fresh for alert in delivery.alerts]
    encoded = [(dumps(a.labels), dumps(a.annotations), dumps(alert_extra(a))) for _, _, a in flat]
    rows = [(payload_id, a.source, a.fingerprint, a.status.value, a.name, a.starts_at, a.ends_at, *enc, now)
            for (_, payload_id, a), enc in zip(flat, encoded, strict=True)]
    ids: list[int] = []
    for part in chunks(rows):
        source, args = conn.rows_source(part, ALERT_TYPES)
        # RETURNING order is not guaranteed, so ids are matched back by sorting (they ascend in insert order).
        returned = await conn.fetch(
            "INSERT INTO alerts (payload_id, source, fingerprint, status, alertname, starts_at, ends_at, labels,"
            f" annotations, extra, received_at) SELECT * FROM {source} WHERE true RETURNING id", *args)
        ids += sorted(int(r["id"]) for r in returned)
    seen: dict[Key, _Seen] = {}
    for (index, _, alert), alert_id, enc in zip(flat, ids, encoded, strict=True):
        key = (alert.source, alert.fingerprint, alert.starts_at)
        entry = seen.setdefault(key, _Seen(alert, alert_id, enc, delivery=index))
        entry.alert, entry.alert_id, entry.encoded = alert, alert_id, enc
        entry.count += 1
        if alert.status is AlertStatus.FIRING:
            entry.firing = True
        else:
            entry.resolved = True
            entry.delivery = index
    return seen


async def _lock_incidents(conn: Connection, seen: dict[Key, _Seen]) -> None:
    """Lock the existing incidents this batch may update, all at once and in id order (the order job
    completions update them in, see JobQueue.finish), before updating any. Concurrent batches touching the
    same incidents (an Alertmanager HA pair delivering to two replicas) then wait for each other instead of
    deadlocking. SQLite has one writer and needs none of this."""
    if conn.dialect != "postgres":
        return
    fingerprints = sorted({(source, fingerprint) for source, fingerprint, _ in seen})
    for part in chunks(fingerprints):
        source, args = conn.rows_source(part, KEY_TYPES[:2])
        await conn.fetch(
            f"SELECT incidents.id FROM incidents JOIN {source} ON incidents.source = v.column1"
            " AND incidents.fingerprint = v.column2 ORDER BY incidents.id FOR UPDATE OF incidents", *args)


async def _open_incidents(conn: Connection, seen: dict[Key, _Seen], now: float) -> dict[Key, int]:
    firing = sorted(k for k, s in seen.items() if s.firing)
    opened: dict[Key, int] = {}
    for part in chunks(firing):
        rows = [(*k, seen[k].alert.name, "open", now, now, seen[k].count, *seen[k].encoded, seen[k].alert_id)
                for k in part]
        source, args = conn.rows_source(rows, INCIDENT_TYPES)
        returned = await conn.fetch(
            "INSERT INTO incidents (source, fingerprint, starts_at, alertname, status, opened_at, last_seen,"
            f" deliveries, labels, annotations, extra, last_alert_id) SELECT * FROM {source} WHERE true"
            " ON CONFLICT (source, fingerprint, starts_at) DO NOTHING"
            " RETURNING id, source, fingerprint, starts_at", *args)
        for r in returned:
            opened[(r["source"], r["fingerprint"], float(r["starts_at"]))] = int(r["id"])
    for part in chunks(sorted(opened)):
        # A firing with a newer startsAt means we never heard the old one resolve.
        source, args = conn.rows_source(part, KEY_TYPES)
        await conn.execute(
            f"UPDATE incidents SET status = 'resolved', resolved_at = ${len(args) + 1},"
            " error = 'superseded by a new firing'"
            f" FROM {source} WHERE incidents.source = v.column1 AND incidents.fingerprint = v.column2"
            " AND incidents.starts_at < v.column3 AND incidents.status = 'open'", *args, now)
    return opened


async def _resolve_incidents(conn: Connection, seen: dict[Key, _Seen], now: float) -> dict[Key, int]:
    """A resolution closes the open firing of its fingerprint that started at or before it. For
    Alertmanager that is the same firing; a sender that resolves by time (PagerDuty, whose resolve
    carries when it happened) closes whichever firing is open, including one a reopen started."""
    resolving = sorted(k for k, s in seen.items() if s.resolved)
    resolved: dict[Key, int] = {}
    for part in chunks(resolving):
        source, args = conn.rows_source(part, KEY_TYPES)
        # SQLite's RETURNING cannot name the FROM rows, so the alert key of each match is read first.
        matches = await conn.fetch(
            f"SELECT incidents.id, v.column1 AS source, v.column2 AS fingerprint, v.column3 AS starts_at"
            f" FROM incidents JOIN {source} ON incidents.source = v.column1 AND incidents.fingerprint = v.column2"
            " AND incidents.starts_at <= v.column3 WHERE incidents.status = 'open'", *args)
        key_of = {int(m["id"]): (m["source"], m["fingerprint"], float(m["starts_at"])) for m in matches}
        if not key_of:
            continue
        rows = [(incident_id, seen[key].alert_id) for incident_id, key in sorted(key_of.items())]
        source, args = conn.rows_source(rows, ("bigint", "bigint"))
        returned = await conn.fetch(
            f"UPDATE incidents SET status = 'resolved', resolved_at = ${len(args) + 1}, last_alert_id = v.column2"
            f" FROM {source} WHERE incidents.id = v.column1 AND incidents.status = 'open' RETURNING incidents.id",
            *args, now)
        for r in returned:
            resolved[key_of[int(r["id"])]] = int(r["id"])
    return resolved


async def _touch_incidents(conn: Connection, keys: list[Key], seen: dict[Key, _Seen], now: float) -> None:
    """Re-deliveries: count them and keep the latest annotations, never reopen or re-run anything."""
    for part in chunks(sorted(keys)):
        rows = [(*k, seen[k].count, seen[k].alert_id, seen[k].encoded[1]) for k in part]
        source, args = conn.rows_source(rows, (*KEY_TYPES, "integer", "bigint", "text"))
        await conn.execute(
            f"UPDATE incidents SET deliveries = incidents.deliveries + v.column4, last_seen = ${len(args) + 1},"
            " last_alert_id = v.column5, annotations = v.column6"
            f" FROM {source} WHERE incidents.source = v.column1 AND incidents.fingerprint = v.column2"
            " AND incidents.starts_at = v.column3", *args, now)


async def _enqueue(conn: Connection, jobs: list[tuple[JobKind[IncidentJob], int]], now: float,
                   max_attempts: int) -> None:
    """The incidents' jobs, as `kind.new` would queue them, in multi-row statements."""
    payload = dumps(IncidentJob().model_dump(mode="json"))
    for part in chunks(jobs):
        rows = [(kind.queue, kind.name, f"incident:{incident_id}", incident_id, payload, "queued", max_attempts, now,
                 now) for kind, incident_id in part]
        source, args = conn.rows_source(rows, JOB_TYPES)
        await conn.execute(
            "INSERT INTO jobs (queue, kind, ordering_key, incident_id, payload, status, max_attempts, run_after,"
            f" created_at) SELECT * FROM {source} WHERE true", *args)


async def _link_alerts(conn: Connection, payload_ids: list[int]) -> None:
    for part in chunks(payload_ids):
        marks = ", ".join(f"${i + 1}" for i in range(len(part)))
        await conn.execute(
            "UPDATE alerts SET incident_id = (SELECT i.id FROM incidents i WHERE i.source = alerts.source"
            " AND i.fingerprint = alerts.fingerprint AND i.starts_at = alerts.starts_at)"
            f" WHERE alerts.payload_id IN ({marks})", *part)
