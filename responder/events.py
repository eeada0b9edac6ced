"""What sinks receive: an incident event, typed.

The pipeline queues one `IncidentEvent` per sink in the transaction that records the change. Evidence is
referenced by its stored rows (`Bundle.evidence_ids`), not copied into every sink's job row; the sink's
worker loads it (`Bundle.evidence`) before the sink sees the event.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from responder.evidence import Evidence
from responder.models import Incident

# Unknown fields are ignored and new fields have defaults, so an event queued by another release still runs.
LENIENT = ConfigDict(extra="ignore", frozen=True)


class IncidentView(BaseModel):
    """The incident as it was when the event was queued."""

    model_config = LENIENT
    id: int
    source: str
    fingerprint: str
    alertname: str
    status: str
    starts_at: float
    opened_at: float = 0.0
    last_seen: float = 0.0
    deliveries: int = 1
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    last_alert_id: int = 0
    rule: str | None = None
    resolved_at: float | None = None
    error: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, incident: Incident, **changes: Any) -> IncidentView:
        return cls.model_validate(asdict(incident) | {"status": incident.status.value} | changes)


class Bundle(BaseModel):
    """What one matched rule produced for one incident."""

    model_config = LENIENT
    rule: str
    # Rows of the evidence table, in the order gathered.
    evidence_ids: list[int] = Field(default_factory=list)
    # Loaded from `evidence_ids` for the sink (events queued by earlier releases carry it inline).
    evidence: list[Evidence] = Field(default_factory=list)
    decisions: list[dict[str, Any]] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    checklist: list[str] = Field(default_factory=list)
    channel: str | None = None


class IncidentEvent(BaseModel):
    model_config = LENIENT
    incident: IncidentView
    bundles: list[Bundle] = Field(default_factory=list)
