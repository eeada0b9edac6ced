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
    group_key: str = ""
    members_firing: int = 0
    members_total: int = 0
    previous_id: int | None = None

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
    # The rule's `alertmanager` target, where silences from Slack go.
    alertmanager: str | None = None


class IncidentEvent(BaseModel):
    model_config = LENIENT
    incident: IncidentView
    bundles: list[Bundle] = Field(default_factory=list)


class Note(BaseModel):
    """Something that happened to an incident after its thread started: a press of a console button, a
    mitigation's outcome, re-run diagnostics. `text` is plain text (sinks escape it); `by` is the Slack
    user id of the person who did it."""

    model_config = LENIENT
    kind: str
    text: str
    by: str | None = None
    detail: str = ""
    output: dict[str, Any] = Field(default_factory=dict)
    # A Slack user group to tell (the rule's escalation group when a mitigation did not help).
    mention: str | None = None
    # The phase the incident's parent message shows from now on (see sinks/slack_blocks.PHASES).
    phase: str | None = None
    # Re-run diagnostics and verifications: the evidence gathered, by rule.
    bundles: list[Bundle] = Field(default_factory=list)
