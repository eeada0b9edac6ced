"""PagerDuty V3 and Grafana webhook bodies shaped as those services send them, and their signatures."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

from tests.support.alerts import START, am_alert


def pd_event(event_type: str = "incident.triggered", *, incident_id: str = "Q1ABCDEF", event_id: str | None = None,
             created_at: str = START, occurred_at: str = START) -> dict[str, Any]:
    data: dict[str, Any]
    if event_type == "pagey.ping":
        data = {"message": "Hello from your friend Pagey!", "type": "ping"}
        resource = "pagey"
    else:
        resource = "incident"
        data = {
            "id": incident_id, "type": "incident", "self": f"https://api.pagerduty.com/incidents/{incident_id}",
            "html_url": f"https://acme.pagerduty.com/incidents/{incident_id}", "number": 42,
            "status": "resolved" if event_type == "incident.resolved" else "triggered",
            "incident_key": "d3640fbd41094207a1c11e58e46b1662", "created_at": created_at,
            "title": "API latency above SLO",
            "service": {"html_url": "https://acme.pagerduty.com/services/PF9KMXH", "id": "PF9KMXH",
                        "self": "https://api.pagerduty.com/services/PF9KMXH", "summary": "checkout-api",
                        "type": "service_reference"},
            "assignees": [], "escalation_policy": {"id": "PUS0KTE", "summary": "Default",
                                                    "type": "escalation_policy_reference"},
            "teams": [], "priority": {"id": "PSO75BM", "summary": "P1", "type": "priority_reference"},
            "urgency": "high", "conference_bridge": None, "resolve_reason": None,
        }
    return {"event": {"id": event_id or str(uuid.uuid4()), "event_type": event_type, "resource_type": resource,
                      "occurred_at": occurred_at, "agent": None, "client": None, "data": data}}


def pd_signature(body: bytes, *secrets: str) -> str:
    return ",".join("v1=" + hmac.new(s.encode(), body, hashlib.sha256).hexdigest() for s in secrets)


def grafana_payload(status: str = "firing", **labels: str) -> dict[str, Any]:
    alert = am_alert("HighCPU", status=status, labels=labels)
    alert.update({"values": {"B": 93.5, "C": 1}, "valueString": "[ var='B' labels={pod=api-1} value=93.5 ]",
                  "dashboardURL": "http://grafana:3000/d/abc", "panelURL": "http://grafana:3000/d/abc?viewPanel=2",
                  "silenceURL": "http://grafana:3000/alerting/silence/new?matcher=alertname%3DHighCPU"})
    return {
        "receiver": "responder", "status": status, "orgId": 1, "alerts": [alert],
        "groupLabels": {"alertname": "HighCPU"}, "commonLabels": alert["labels"], "commonAnnotations": {},
        "externalURL": "http://grafana:3000/", "version": "1", "groupKey": '{}:{alertname="HighCPU"}',
        "truncatedAlerts": 0, "title": "[FIRING:1] HighCPU", "state": "alerting",
        "message": "**Firing**\n\nValue: B=93.5",
    }


def grafana_signature(body: bytes, secret: str, timestamp: str | None = None) -> str:
    signed = f"{timestamp}:".encode() + body if timestamp else body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()
