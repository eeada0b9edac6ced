"""The shapes every layer shares: a normalized alert, an incident (a group of alerts), a queued job.

Intakes turn vendor payloads into `Alert`s; a `Grouping` places each alert in the groups it belongs to;
the store turns those into `Incident`s with their `Member`s and `Job`s; the pipeline reads them back.
Nothing here knows about HTTP, SQL or Slack.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class AlertStatus(enum.StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class IncidentStatus(enum.StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert as every intake hands it over, whatever its vendor.

    `fingerprint` plus `starts_at` identify one firing: a re-delivery carries both unchanged, and a
    re-fire after resolution carries a new `starts_at`.
    """

    source: str
    status: AlertStatus
    fingerprint: str
    starts_at: float
    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    ends_at: float | None = None
    generator_url: str = ""
    group_key: str = ""
    # Vendor extras worth keeping for sinks (externalURL, dashboard links, PagerDuty urgency ...).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")


@dataclass(frozen=True, slots=True)
class Placement:
    """One group an alert belongs to: the rule that matched it (None: none did) and the group key the
    rule's `group_by` gives. Incidents are keyed by (source, rule, group key)."""

    rule: str | None
    group_key: str
    # How long the group collects members before its evidence is gathered.
    group_wait: float = 0.0

    def group_id(self, source: str) -> str:
        """The incident key as stored: fixed length whatever the labels, so it indexes well."""
        return _group_id(source, self.rule or "", self.group_key)


# The alerts of a delivery mostly share their groups (and a batch asks again for each): hashed once.
@functools.lru_cache(maxsize=4096)
def _group_id(source: str, rule: str, group_key: str) -> str:
    return hashlib.sha256(f"{source}\0{rule}\0{group_key}".encode()).hexdigest()[:32]


def source_group_key(alert: Alert) -> str:
    """The sender's own grouping: Alertmanager's and Grafana's groupKey, else the alert itself
    (a PagerDuty incident's fingerprint names the PagerDuty incident)."""
    return alert.group_key or alert.fingerprint


class Grouping(Protocol):
    def place(self, alert: Alert) -> list[Placement]: ...


class SourceGrouping:
    """No rules: every alert in the group its sender gave it."""

    def place(self, alert: Alert) -> list[Placement]:
        return [Placement(None, source_group_key(alert))]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One accepted webhook request: its raw body (kept for replay) and the alerts in it."""

    source: str
    body: bytes
    alerts: list[Alert]
    # A vendor's delivery id (PagerDuty X-Webhook-Id); a repeat of a known id is stored once.
    dedup_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    payload_id: int
    alerts: int
    opened: int
    resolved: int
    duplicate: bool = False
    # Incidents whose members changed (joined or resolved) without opening or resolving.
    updated: int = 0


@dataclass(frozen=True, slots=True)
class Incident:
    """A group of alerts: (source, rule, group key) while it is open. `labels` are the labels its
    members share; `fingerprint`, `alertname` and `starts_at` are those of its first member."""

    id: int
    source: str
    fingerprint: str
    alertname: str
    status: IncidentStatus
    starts_at: float
    opened_at: float
    last_seen: float
    deliveries: int
    labels: dict[str, str]
    annotations: dict[str, str]
    last_alert_id: int
    rule: str | None = None
    resolved_at: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    group_key: str = ""
    members_firing: int = 0
    members_total: int = 0
    # The incident of the same group that resolved before this one opened.
    previous_id: int | None = None
    processed_at: float | None = None


@dataclass(frozen=True, slots=True)
class Member:
    """One alert of an incident's group, identified by (fingerprint, starts_at)."""

    id: int
    incident_id: int
    fingerprint: str
    starts_at: float
    status: AlertStatus
    labels: dict[str, str]
    annotations: dict[str, str]
    first_seen: float
    resolved_at: float | None = None

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to queue, as `JobKind.new` (responder/jobs.py) builds it from a validated payload."""

    queue: str
    kind: str
    ordering_key: str
    incident_id: int | None = None
    payload: dict[str, Any] | None = None
    # None: the store's default. Outbox rows for external APIs use many more, so an outage only delays them.
    max_attempts: int | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """A unit of queued work. `queue` names the worker pool, `ordering_key` serializes related jobs."""

    id: int
    queue: str
    kind: str
    ordering_key: str
    incident_id: int | None
    payload: dict[str, Any]
    attempts: int
    lease_owner: str
    created_at: float


def common_labels(label_sets: Sequence[dict[str, str]]) -> dict[str, str]:
    """The labels every one of the sets has, with the same value."""
    if not label_sets:
        return {}
    first, *rest = label_sets
    return {k: v for k, v in first.items() if all(other.get(k) == v for other in rest)}


def member_alert(incident: Incident, member: Member) -> Alert:
    return Alert(source=incident.source, status=member.status, fingerprint=member.fingerprint,
                 starts_at=member.starts_at, labels=member.labels, annotations=member.annotations,
                 group_key=incident.group_key)


def group_view(incident: Incident, members: Sequence[Member]) -> tuple[Incident, Alert, list[Alert]]:
    """The incident as its rule's templates see it: `labels` and `annotations` are those its firing
    members share (all members, once none fires); the alert standing for the group; the firing members
    (for `for_each: alerts` steps)."""
    firing = [m for m in members if m.status is AlertStatus.FIRING] or list(members)
    if firing:
        incident = dataclasses.replace(incident, labels=common_labels([m.labels for m in firing]),
                                       annotations=common_labels([m.annotations for m in firing]))
    alert = Alert(
        source=incident.source,
        status=AlertStatus.RESOLVED if incident.status is IncidentStatus.RESOLVED else AlertStatus.FIRING,
        fingerprint=incident.fingerprint, starts_at=incident.starts_at, labels=incident.labels,
        annotations=incident.annotations, generator_url=str(incident.extra.get("generator_url", "")),
        group_key=incident.group_key, extra=incident.extra)
    return incident, alert, [member_alert(incident, m) for m in firing]
