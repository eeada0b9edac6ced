"""Grafana unified-alerting webhooks: Alertmanager-shaped (`version` "1") with Grafana's extras.

Same header authentication as Alertmanager, plus Grafana's optional HMAC signature: a hex HMAC-SHA256
of the body, or of `timestamp:body` when a timestamp header is configured on the contact point.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pydantic import ConfigDict, Field

from responder.intake.alertmanager import WireAlert, WirePayload, kept_headers, load_versioned, normalize
from responder.intake.auth import Unauthorized, any_signature_matches
from responder.intake.base import Intake, IntakeOptions, registry
from responder.models import Delivery


class GrafanaAlert(WireAlert):
    values: dict[str, float | int | None] | None = None
    valueString: str = ""
    dashboardURL: str = ""
    panelURL: str = ""
    silenceURL: str = ""


class GrafanaPayload(WirePayload):
    model_config = ConfigDict(extra="ignore", strict=True)

    alerts: list[GrafanaAlert]  # type: ignore[assignment]
    title: str = ""
    state: str = ""
    message: str = ""
    orgId: int = 0


class GrafanaOptions(IntakeOptions):
    # Header names as set on the Grafana contact point ("HMAC Signature" settings).
    signature_header: str = "X-Grafana-Alerting-Signature"
    timestamp_header: str | None = None
    # With a timestamp header, signatures older than this are refused (replays).
    max_clock_skew_seconds: float = Field(default=300, gt=0)


@registry.register
class GrafanaIntake(Intake):
    name = "grafana"
    path = "/webhooks/grafana"
    options_model = GrafanaOptions

    def authenticate_body(self, headers: Mapping[str, str], body: bytes) -> None:
        if not self.signing_secrets:
            return
        options: GrafanaOptions = self.options
        signature = headers.get(options.signature_header, "")
        if not signature:
            raise Unauthorized(f"missing {options.signature_header}")
        signed = body
        if options.timestamp_header:
            stamp = headers.get(options.timestamp_header, "")
            try:
                skew = abs(time.time() - float(stamp))
            except ValueError:
                raise Unauthorized(f"missing or malformed {options.timestamp_header}") from None
            if skew > options.max_clock_skew_seconds:
                raise Unauthorized(f"{options.timestamp_header} is {skew:.0f}s away from now")
            signed = stamp.encode() + b":" + body
        if not any_signature_matches([signature], self.signing_secrets, signed):
            raise Unauthorized(f"{options.signature_header} does not match the body")

    def parse(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        payload = load_versioned(body, GrafanaPayload, "1")
        extras: list[dict[str, Any]] = [
            {"dashboard_url": a.dashboardURL, "panel_url": a.panelURL, "silence_url": a.silenceURL,
             "value_string": a.valueString, "values": a.values or {}, "org_id": payload.orgId}
            for a in payload.alerts
        ]
        return Delivery(self.name, body, normalize(self.name, payload, extras=extras), headers=kept_headers(headers))
