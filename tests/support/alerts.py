"""Alertmanager webhook payloads as Alertmanager sends them (version 4)."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

# One start time per test run, recent enough for guards that refuse to act on old alerts, and the same for
# every payload built in the run (re-deliveries must carry the same startsAt).
START = time.strftime("%Y-%m-%dT%H:%M:%S.5Z", time.gmtime(time.time() - 60))


def am_alert(alertname: str = "HighErrorRate", *, status: str = "firing", starts_at: str = START,
             labels: dict[str, Any] | None = None, annotations: dict[str, str] | None = None,
             fingerprint: str | None = None) -> dict[str, Any]:
    all_labels = {"alertname": alertname, "severity": "critical", "namespace": "prod", **(labels or {})}
    fp = fingerprint or hashlib.sha256(json.dumps(sorted(all_labels.items())).encode()).hexdigest()[:16]
    return {
        "status": status,
        "labels": all_labels,
        "annotations": {"summary": f"{alertname} is firing", **(annotations or {})},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-23T09:00:00Z",
        "generatorURL": "http://prometheus.example/graph?g0.expr=up",
        "fingerprint": fp,
    }


def am_payload(*alerts: dict[str, Any], status: str | None = None, group_key: str = '{}:{alertname="X"}'
               ) -> dict[str, Any]:
    alerts = alerts or (am_alert(),)
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status or ("firing" if any(a["status"] == "firing" for a in alerts) else "resolved"),
        "receiver": "responder",
        "groupLabels": {"alertname": alerts[0]["labels"]["alertname"]},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": list(alerts),
    }
