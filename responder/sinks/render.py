"""Plain-text rendering of an incident event, for the console sink and the CLI."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from responder.events import IncidentEvent

STATUS_MARK = {"ok": "✓", "error": "✗", "timeout": "⏱", "skipped": "-"}
# What a terminal would obey instead of showing: C0 controls but newline and tab (ESC starts cursor and
# colour sequences, CR overwrites a line), DEL, C1 controls (CSI is \x9b) and the bidi controls that
# reorder what follows (a right-to-left override makes "exe.gnp" read "png.exe").
_TERMINAL_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` for a terminal: each control character shown as its escape (`\x1b`, `\u202e`), not obeyed."""
    return _TERMINAL_CONTROLS.sub(lambda m: ascii(m.group())[1:-1], text)


def ts(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render_event(kind: str, event: IncidentEvent) -> str:
    """The event as text for a terminal: evidence and labels come from outside, so what a terminal would
    interpret is shown escaped."""
    return printable(_render(kind, event))


def _render(kind: str, event: IncidentEvent) -> str:
    incident = event.incident
    head = f"[{kind}] incident #{incident.id} {incident.alertname or '(no alertname)'}"
    lines = [head, f"  labels: {', '.join(f'{k}={v}' for k, v in sorted(incident.labels.items()))}"]
    summary = incident.annotations.get("summary")
    if summary:
        lines.append(f"  summary: {summary}")
    lines.append(f"  alerts: {incident.members_firing} firing of {incident.members_total}"
                 f" (group {incident.group_key or '-'})")
    if kind == "incident.resolved":
        lines.append(f"  resolved at {ts(incident.resolved_at)}")
        return "\n".join(lines)
    if kind == "incident.members":
        return "\n".join(lines)
    if not event.bundles:
        lines.append("  no rule matched")
    for bundle in event.bundles:
        lines.append(f"  rule: {bundle.rule}")
        for error in bundle.errors:
            lines.append(f"    ! {error}")
        for ev in bundle.evidence:
            mark = STATUS_MARK.get(ev.status.value, "?")
            lines.append(f"    {mark} {ev.step}: {ev.title} ({ev.status.value}, {ev.duration_ms:.0f} ms)")
            lines += [f"      {line}" for line in ev.text.splitlines()[:40]]
        for decision in bundle.decisions:
            lines.append(f"    → {decision['step']}: {decision['action']} on {decision['target']}:"
                         f" {decision['outcome']}{' (' + decision['reason'] + ')' if decision.get('reason') else ''}")
        for item in bundle.checklist:
            lines.append(f"    [ ] {item}")
    return "\n".join(lines)
