"""The shapes every layer shares: a normalized alert, an incident, a queued job.

Intakes turn vendor payloads into `Alert`s; the store turns alerts into `Incident`s and `Job`s; the
pipeline reads them back. Nothing here knows about HTTP, SQL or Slack.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


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


@dataclass(frozen=True, slots=True)
class Incident:
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

    def as_alert(self) -> Alert:
        return Alert(
            source=self.source,
            status=AlertStatus.RESOLVED if self.status is IncidentStatus.RESOLVED else AlertStatus.FIRING,
            fingerprint=self.fingerprint,
            starts_at=self.starts_at,
            labels=self.labels,
            annotations=self.annotations,
            generator_url=str(self.extra.get("generator_url", "")),
            group_key=str(self.extra.get("group_key", "")),
            extra=self.extra,
        )


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
