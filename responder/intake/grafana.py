"""Grafana unified-alerting webhooks: Alertmanager-shaped (`version` "1") with Grafana's extras.

Same header authentication as Alertmanager, plus Grafana's optional HMAC signature: a hex HMAC-SHA256
of the body, or of `timestamp:body` when a timestamp header is configured on the contact point.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

from pydantic import ConfigDict, Field

from responder.intake.alertmanager import WireAlert, WirePayload, kept_headers, load_versioned, normalize
from responder.intake.auth import Unauthorized, any_signature_matches, is_hex_sha256
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

    def check_signature_headers(self, headers: Mapping[str, str]) -> None:
        options: GrafanaOptions = self.options
        if not is_hex_sha256(headers.get(options.signature_header, "").strip()):
            raise Unauthorized(f"missing or malformed {options.signature_header} (hex HMAC-SHA256)")
        if options.timestamp_header:
            stamp = headers.get(options.timestamp_header, "")
            # Whole seconds since the epoch, as Grafana sends them: no float, so no nan, inf or exponent.
            if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
                raise Unauthorized(f"missing or malformed {options.timestamp_header} (epoch seconds)")
            skew = abs(time.time() - int(stamp))
            if skew > options.max_clock_skew_seconds:
                raise Unauthorized(f"{options.timestamp_header} is {skew:.0f}s away from now")

    def signed_data(self, headers: Mapping[str, str], body: bytes) -> bytes:
        stamp = headers.get(self.options.timestamp_header, "") if self.options.timestamp_header else ""
        return stamp.encode() + b":" + body if stamp else body

    def authenticate_body(self, headers: Mapping[str, str], body: bytes) -> None:
        if not self.signing_secrets:
            return
        self.check_signature_headers(headers)
        signature = headers.get(self.options.signature_header, "")
        if not any_signature_matches([signature], self.signing_secrets, self.signed_data(headers, body)):
            raise Unauthorized(f"{self.options.signature_header} does not match the body")

    def parse(self, body: bytes, headers: Mapping[str, str]) -> Delivery:
        payload = load_versioned(body, GrafanaPayload, "1")
        extras: list[dict[str, Any]] = [
            {"dashboard_url": a.dashboardURL, "panel_url": a.panelURL, "silence_url": a.silenceURL,
             "value_string": a.valueString, "values": a.values or {}, "org_id": payload.orgId}
            for a in payload.alerts
        ]
        # A signed delivery is stored once: the same signed body (and timestamp) sent again within the
        # skew window is a replay, answered as a duplicate.
        dedup = hashlib.sha256(self.signed_data(headers, body)).hexdigest() if self.signing_secrets else None
        return Delivery(self.name, body, normalize(self.name, payload, extras=extras), dedup_key=dedup,
                        headers=kept_headers(headers))
