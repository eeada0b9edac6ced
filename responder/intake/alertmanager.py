"""Prometheus Alertmanager webhook payloads (version 4).

https://prometheus.io/docs/alerting/latest/configuration/#webhook_config documents the shape.
Alertmanager delivers at least once and resends each group every group_interval, so parsing here is
pure and the store does the de-duplication.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from responder.intake.base import Intake, PayloadError, registry
from responder.models import Alert, AlertStatus, Delivery

_FRACTION = re.compile(r"(\.\d{6})\d+")


# Alerts of a group, and every re-send of it, repeat the same few times: each is parsed once.
@functools.lru_cache(maxsize=4096)
def parse_time(value: str) -> float | None:
    """RFC 3339 with up to nanoseconds; Go's zero time (year 1) means 'not set'. A time without a zone
    is refused: read as local time it would mean something else on every host."""
    if not value or value.startswith("0001-01-01"):
        return None
    try:
        parsed = datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00")))
    except ValueError:
        raise ValueError(f"not an RFC 3339 time: {value[:64]!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{value[:64]!r} has no time zone (end it with Z or an offset such as +00:00)")
    return parsed.timestamp()


class WireAlert(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str
    endsAt: str = ""
    generatorURL: str = ""
    fingerprint: str = ""


class WirePayload(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    version: str
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupKey: str = ""
    truncatedAlerts: int = 0
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[WireAlert]


def label_fingerprint(labels: Mapping[str, str]) -> str:
    """Stable id for a label set, for senders that do not give a fingerprint."""
    canonical = json.dumps(sorted(labels.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def decode_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"body is not valid JSON: {exc}") from None


def normalize(source: str, payload: WirePayload, *, extras: list[dict[str, Any]] | None = None) -> list[Alert]:
    # The group labels are what a silence from Slack matches: the group this notification stands for.
    # Without per-alert extras every alert holds the same dict (the edge check then reads it once).
    shared: dict[str, Any] = {"receiver": payload.receiver, "external_url": payload.externalURL,
                              "group_labels": payload.groupLabels}
    alerts = []
    for index, wire in enumerate(payload.alerts):
        starts_at = _alert_time(wire.startsAt, index, "startsAt")
        ends_at = _alert_time(wire.endsAt, index, "endsAt")
        if starts_at is None:
            raise PayloadError("startsAt is required", f"alerts.{index}.startsAt")
        extra = {**shared, **extras[index]} if extras else shared
        alerts.append(Alert(
            source=source,
            status=_STATUSES[wire.status],
            fingerprint=wire.fingerprint or label_fingerprint(wire.labels),
            starts_at=starts_at,
            ends_at=ends_at,
            labels=wire.labels,
            annotations=wire.annotations,
            generator_url=wire.generatorURL,
            group_key=payload.groupKey,
            extra=extra,
        ))
    return alerts


def _alert_time(value: str, index: int, name: str) -> float | None:
    try:
        return parse_time(value)
    except ValueError as exc:
        raise PayloadError(str(exc), f"alerts.{index}.{name}") from None


# Looked up per alert: a dict is several times quicker than calling the enum with the value.
_STATUSES = {status.value: status for status in AlertStatus}


@registry.register
class AlertmanagerIntake(Intake):
    name = "alertmanager"
    path = "/webhooks/alertmanager"

    def parse(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        payload = load_versioned(body, WirePayload, "4")
        return Delivery(self.name, body, normalize(self.name, payload), headers=kept_headers(headers))


P = TypeVar("P", bound=WirePayload)


def load_versioned(body: bytes, model: type[P], version: str) -> P:
    """An Alertmanager-shaped body of one payload version, validated, or PayloadError naming the problem."""
    data = decode_json(body)
    if not isinstance(data, dict):
        raise PayloadError("expected a JSON object")
    if data.get("version") != version:
        raise PayloadError(f"unsupported payload version {data.get('version')!r}; expected {version!r}", "version")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise PayloadError.from_validation(exc) from None


def kept_headers(headers: Mapping[str, str], names: tuple[str, ...] = ("user-agent", "content-type", "x-request-id")
                 ) -> dict[str, str]:
    """Headers worth keeping with the raw payload; never credentials. A header is whatever the client
    sent: kept as printable text (undecodable bytes and control characters replaced), bounded."""
    return {str(k): header_text(v) for k, v in headers.items() if k.lower() in names}


def header_text(value: str, limit: int = 256) -> str:
    text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:limit]
    return "".join(c if c.isprintable() else "\ufffd" for c in text)
