"""PagerDuty V3 webhooks (`event` envelope, signed with `X-PagerDuty-Signature`).

PagerDuty expects a 2xx within seconds, retries 5xx/429/timeouts and may deliver an event twice, so
requests are verified, stored once per event id (`event.id`, inside the signed body) and answered at once.

Mapping: an `incident.*` event whose data is the incident updates ONE incident keyed by the PagerDuty
incident id and its `created_at`: `incident.triggered` opens it; an acknowledgement or escalation is a
re-delivery of it (and opens it only if we never saw it trigger). `incident.reopened` starts a new
firing, keyed by when it reopened, because the `created_at` firing is already resolved.
`incident.resolved` is keyed by when it happened and closes whichever firing of the incident is open
by then (the first one, or the reopened one). `pagey.ping`, notes, responder requests, status updates
and non-incident events are stored and answered 2xx, with no alerts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from responder.intake.alertmanager import decode_json, kept_headers, parse_time
from responder.intake.auth import Unauthorized, any_signature_matches, is_hex_sha256
from responder.intake.base import Intake, PayloadError, registry
from responder.models import Alert, AlertStatus, Delivery


class Reference(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str = ""
    summary: str = ""


class IncidentData(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str = Field(min_length=1)
    type: str = "incident"
    title: str = ""
    status: str = ""
    urgency: str = ""
    html_url: str = ""
    number: int | None = None
    incident_key: str | None = None
    created_at: str
    service: Reference | None = None
    priority: Reference | None = None


class Event(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str = Field(min_length=1)
    event_type: str = Field(min_length=1)
    resource_type: str = ""
    occurred_at: str
    data: dict[str, Any]


class Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore")
    event: Event


def signatures(header: str) -> list[str]:
    """`v1=abc,v1=def` -> ['abc', 'def'] (other versions are ignored, as PagerDuty advises)."""
    found = []
    for part in header.split(","):
        version, _, value = part.strip().partition("=")
        if version == "v1" and value:
            found.append(value)
    return found


def _about_an_incident(event: Event) -> bool:
    """Incident events whose data is the incident itself. Notes, responder requests and status updates
    (`incident_note`, `incident_responder`, `incident_status_update`) are stored without an alert."""
    data_type = event.data.get("type", "incident")
    return event.event_type.startswith("incident.") and data_type == "incident"


@registry.register
class PagerDutyIntake(Intake):
    name = "pagerduty"
    path = "/webhooks/pagerduty"

    def check_signature_headers(self, headers: Mapping[str, str]) -> None:
        if not any(is_hex_sha256(s) for s in signatures(headers.get("X-PagerDuty-Signature", ""))):
            raise Unauthorized("missing or malformed X-PagerDuty-Signature (v1=<hex HMAC-SHA256>)")

    def authenticate_body(self, headers: Mapping[str, str], body: bytes) -> None:
        if not self.signing_secrets:
            return
        given = signatures(headers.get("X-PagerDuty-Signature", ""))
        if not any_signature_matches(given, self.signing_secrets, body):
            raise Unauthorized("X-PagerDuty-Signature does not match the body under any configured secret")

    def parse(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        data = decode_json(body)
        if not isinstance(data, dict):
            raise PayloadError("expected a JSON object")
        try:
            event = Envelope.model_validate(data).event
        except ValidationError as exc:
            raise PayloadError.from_validation(exc) from None
        # The event id is inside the signed body; X-Webhook-Id is not signed, so a captured body sent again
        # with a new (or no) header must still be the same delivery.
        dedup = event.id
        kept = kept_headers(headers, ("x-webhook-id", "x-webhook-subscription", "user-agent"))
        alerts = [self._alert(event)] if _about_an_incident(event) else []
        return Delivery(self.name, body, alerts, dedup_key=dedup, headers=kept)

    def _alert(self, event: Event) -> Alert:
        try:
            incident = IncidentData.model_validate(event.data)
        except ValidationError as exc:
            raise PayloadError.from_validation(exc, "event.data.") from None
        times: dict[str, float | None] = {}
        for field, value in (("event.data.created_at", incident.created_at), ("event.occurred_at", event.occurred_at)):
            try:
                times[field] = parse_time(value)
            except ValueError as exc:
                raise PayloadError(str(exc), field) from None
        created, occurred = times["event.data.created_at"], times["event.occurred_at"]
        if created is None or occurred is None:
            raise PayloadError("created_at and occurred_at are required", "event.data.created_at")
        resolved = event.event_type == "incident.resolved"
        labels = {
            "alertname": incident.title or f"PagerDuty incident {incident.id}",
            "event_type": event.event_type,
            "service": incident.service.summary if incident.service else "",
            "urgency": incident.urgency,
            "priority": incident.priority.summary if incident.priority else "",
            "pagerduty_incident": incident.id,
        }
        return Alert(
            source=self.name,
            status=AlertStatus.RESOLVED if resolved else AlertStatus.FIRING,
            fingerprint=f"pd:{incident.id}",
            # A resolve carries when it happened: the store closes whichever firing of this incident is
            # open by then, the first one or the one a reopen started.
            starts_at=occurred if event.event_type in ("incident.reopened", "incident.resolved") else created,
            labels={k: v for k, v in labels.items() if v},
            annotations={"summary": incident.title, "status": incident.status},
            ends_at=occurred if resolved else None,
            generator_url=incident.html_url,
            extra={"event_id": event.id, "incident_number": incident.number, "html_url": incident.html_url},
        )
