"""Plain-text rendering of an incident event, for the console sink and the CLI."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

STATUS_MARK = {"ok": "✓", "error": "✗", "timeout": "⏱", "skipped": "-"}


def ts(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render_event(kind: str, payload: dict[str, Any]) -> str:
    incident = payload["incident"]
    labels = incident.get("labels", {})
    head = f"[{kind}] incident #{incident['id']} {incident['alertname'] or '(no alertname)'}"
    lines = [head, f"  labels: {', '.join(f'{k}={v}' for k, v in sorted(labels.items()))}"]
    summary = incident.get("annotations", {}).get("summary")
    if summary:
        lines.append(f"  summary: {summary}")
    lines.append(f"  alerts: {incident.get('members_firing', 0)} firing of {incident.get('members_total', 0)}"
                 f" (group {incident.get('group_key') or '-'})")
    if kind == "incident.resolved":
        lines.append(f"  resolved at {ts(incident.get('resolved_at'))}")
        return "\n".join(lines)
    if kind == "incident.members":
        return "\n".join(lines)
    bundles = payload.get("bundles", [])
    if not bundles:
        lines.append("  no rule matched")
    for bundle in bundles:
        lines.append(f"  rule: {bundle['rule']}")
        for error in bundle.get("errors", []):
            lines.append(f"    ! {error}")
        for ev in bundle.get("evidence", []):
            mark = STATUS_MARK.get(ev["status"], "?")
            lines.append(f"    {mark} {ev['title']} ({ev['status']}, {ev['duration_ms']:.0f} ms)")
            lines += [f"      {line}" for line in ev["text"].splitlines()[:40]]
        for decision in bundle.get("decisions", []):
            lines.append(f"    → {decision['action']} on {decision['target']}: {decision['outcome']}"
                         f"{' (' + decision['reason'] + ')' if decision.get('reason') else ''}")
        for item in bundle.get("checklist", []):
            lines.append(f"    [ ] {item}")
    return "\n".join(lines)
