"""Block Kit messages for an incident thread, kept within Slack's limits.

Slack refuses a message with more than 50 blocks or a section text over 3000 characters (and a header
over 150). Whatever is cut here is marked, and the full text travels with the message as a file.
Pure functions of their inputs: the same incident renders the same blocks (tests hold a golden copy).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from responder.sinks.mrkdwn import code_block, escape, inline_code, link
from responder.sinks.render import STATUS_MARK

MAX_BLOCKS = 50
SECTION_CHARS = 3000
HEADER_CHARS = 150
MAX_FIELDS = 10
TRUNCATED = "… (truncated: the full text is attached below)"
CUT = "… (cut)"

KEY_LABELS = ("severity", "namespace", "service", "job", "instance", "pod", "deployment", "cluster")
PHASES = {
    "firing": (":fire:", "Firing"),
    "mitigating": (":hammer_and_wrench:", "Mitigating"),
    "awaiting_approval": (":raised_hand:", "Awaiting approval"),
    "resolved": (":white_check_mark:", "Resolved"),
}
OUTCOME_ICON = {"executed": ":white_check_mark:", "dry-run": ":memo:", "pending": ":raised_hand:",
                "skipped": ":no_entry_sign:", "failed": ":x:", "executing": ":hourglass_flowing_sand:"}
TABLE_ROWS = 15
TABLE_CELL = 40


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    title: str
    content: bytes


@dataclass(slots=True)
class Message:
    text: str
    blocks: list[dict[str, Any]]
    attachments: list[Attachment] = field(default_factory=list)


def fit(text: str, limit: int, marker: str = CUT) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    return text[: limit - len(marker)] + marker, True


def section(text: str, marker: str = CUT) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": fit(text, SECTION_CHARS, marker)[0]}}


def code_section(text: str) -> tuple[dict[str, Any], bool]:
    """A code block in one section; True when it had to be cut."""
    # Escaping lengthens the text: cut the raw text until the escaped block fits one section.
    body, cut = fit(text, SECTION_CHARS - 8, TRUNCATED)
    while len(block := code_block(body)) > SECTION_CHARS:
        body, cut = fit(body, len(body) - (len(block) - SECTION_CHARS), TRUNCATED)
    return {"type": "section", "text": {"type": "mrkdwn", "text": block}}, cut


def context(*parts: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": fit(p, SECTION_CHARS)[0]} for p in parts]}


def fields_section(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    return {"type": "section", "fields": [
        {"type": "mrkdwn", "text": fit(f"*{escape(k)}*\n{escape(v)}", 2000)[0]} for k, v in pairs[:MAX_FIELDS]]}


def when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m {secs}s" if minutes else f"{secs}s"


def cap_blocks(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(blocks) <= MAX_BLOCKS:
        return blocks
    return [*blocks[: MAX_BLOCKS - 1], context(f"… {len(blocks) - MAX_BLOCKS + 1} more block(s) not shown")]


# --- the parent message ---------------------------------------------------------------------------


def phase_of(bundles: list[dict[str, Any]]) -> str:
    outcomes = {d.get("outcome") for b in bundles for d in b.get("decisions", [])}
    if "pending" in outcomes:
        return "awaiting_approval"
    # A dry-run changed nothing: the incident is still firing, and the thread says what would have been done.
    if outcomes & {"executed", "executing"}:
        return "mitigating"
    return "firing"


def silence_url(incident: dict[str, Any]) -> str | None:
    external = str(incident.get("extra", {}).get("external_url") or "").rstrip("/")
    if not external:
        return None
    labels = incident.get("labels", {})
    matchers = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{external}/#/silences/new?filter={quote('{' + matchers + '}', safe='')}"


@dataclass(frozen=True, slots=True)
class Member:
    alertname: str
    status: str
    labels: dict[str, str]


@dataclass(frozen=True, slots=True)
class GroupCounts:
    """How many alerts the incident's group has, and how many of them still fire."""

    firing: int
    total: int


def parent_message(facts: dict[str, Any], members: list[Member], mention: str | None,
                   list_lines: int, counts: GroupCounts | None = None, now: float | None = None) -> Message:
    """The thread's summary, kept current with chat.update: status, the group's alerts (counts and the
    first `list_lines`), age, and the actions decided. `members` are the first alerts of the group;
    `counts` all of them (default: `members` are all)."""
    incident = facts["incident"]
    if counts is None:
        counts = GroupCounts(sum(1 for m in members if m.status != "resolved"), len(members))
    # The thread is resolved when every alert of its group is; until then it shows the incident's phase.
    phase = str(facts.get("phase", "firing"))
    if counts.total and not counts.firing:
        phase = "resolved"
    elif phase == "resolved" and counts.total:
        phase = "firing"
    emoji, label = PHASES.get(str(phase), PHASES["firing"])
    name = incident.get("alertname") or "(no alertname)"
    labels: dict[str, str] = incident.get("labels", {})
    annotations: dict[str, str] = incident.get("annotations", {})
    summary = annotations.get("summary", "")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": fit(escape(f"{label}: {name}"), HEADER_CHARS)[0],
                                    "emoji": True}},
    ]
    lines = [f"{emoji} *{escape(summary)}*" if summary else f"{emoji} *{escape(name)}*"]
    if annotations.get("description"):
        lines.append(escape(annotations["description"]))
    blocks.append(section("\n".join(lines)))
    pairs = [(k.capitalize(), labels[k]) for k in KEY_LABELS if labels.get(k)]
    pairs.append(("Rule", incident.get("rule") or "no rule matched"))
    blocks.append(fields_section(pairs))
    if counts.total > 1:
        blocks.append(section(storm_list(members, list_lines, counts)))
    if facts.get("actions"):
        blocks.append(section("*Actions*\n" + "\n".join(escape(str(a)) for a in facts["actions"])))
    timeline = [f"Incident #{incident['id']}", f"started {when(incident.get('starts_at'))}"]
    if incident.get("previous_id"):
        timeline.append(f"follows #{incident['previous_id']}")
    if phase == "resolved":
        resolved_at = incident.get("resolved_at")
        timeline.append(f"resolved {when(resolved_at)}")
        if resolved_at is not None:
            timeline.append(f"after {duration(float(resolved_at) - float(incident['starts_at']))}")
    elif now is not None:
        # Minutes, not seconds: the age moves on only when the parent is edited for another change.
        timeline.append(f"open {duration(60 * ((now - float(incident['starts_at'])) // 60))}")
    blocks.append(context(" · ".join(timeline)))
    links = [(incident.get("extra", {}).get("generator_url"), "Source"), (annotations.get("runbook_url"), "Runbook"),
             (silence_url(incident), "Silence")]
    shown = [shown for url, text in links if (shown := link(url, text))]
    if shown:
        blocks.append(section(" · ".join(shown)))
    text = escape(f"{label}: {name}" + (f" — {summary}" if summary else ""))
    if mention:
        text += f" <!subteam^{mention}>"
        blocks.append(context(f"cc <!subteam^{mention}>"))
    return Message(fit(text, SECTION_CHARS)[0], cap_blocks(blocks))


def storm_list(members: list[Member], list_lines: int, counts: GroupCounts) -> str:
    head = (f"*{counts.total} alerts in this group* ({counts.firing} firing,"
            f" {counts.total - counts.firing} resolved)")
    lines = []
    for member in members[:list_lines]:
        detail = ", ".join(f"{k}={member.labels[k]}" for k in KEY_LABELS[1:] if member.labels.get(k))
        mark = ":white_check_mark:" if member.status == "resolved" else ":red_circle:"
        lines.append(f"{mark} {escape(member.alertname)}" + (f" ({escape(detail)})" if detail else ""))
    if counts.total > len(lines):
        lines.append(f"… and {counts.total - len(lines)} more")
    return "\n".join([head, *lines])


def members_message(joined: int, resolved: int, counts: GroupCounts) -> Message:
    """Member changes since the last summary, in one reply: "+37 alerts, 2 resolved"."""
    changes = [f"+{joined} alert{'s' if joined != 1 else ''}"] if joined else []
    if resolved:
        changes.append(f"{resolved} resolved")
    text = f":busts_in_silhouette: {', '.join(changes)} · now {counts.firing} firing of {counts.total}"
    return Message(text, [section(text)])


def resolved_message(incident: dict[str, Any], counts: GroupCounts) -> Message:
    started, resolved_at = incident.get("starts_at"), incident.get("resolved_at")
    after = f" after {duration(float(resolved_at) - float(started))}" if started and resolved_at else ""
    alerts = "the alert" if counts.total == 1 else f"all {counts.total} alerts"
    text = f":white_check_mark: Resolved: {alerts} resolved{after}"
    return Message(text, [section(text)])


# --- thread replies -------------------------------------------------------------------------------


def _table(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for row in rows[:TABLE_ROWS] for k in row))
    cells = [[fit(str(c), TABLE_CELL)[0] for c in columns]]
    cells += [[fit(_scalar(row.get(c, "")), TABLE_CELL)[0] for c in columns] for row in rows[:TABLE_ROWS]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    if len(rows) > TABLE_ROWS:
        lines.append(f"… {len(rows) - TABLE_ROWS} more row(s)")
    return "\n".join(lines)


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def evidence_kind(payload: dict[str, Any]) -> str:
    if isinstance(payload.get("series"), list) and payload["series"]:
        return "series"
    if isinstance(payload.get("rows"), list) and payload["rows"] and all(isinstance(r, dict) for r in payload["rows"]):
        return "rows"
    if isinstance(payload.get("fields"), dict) and payload["fields"]:
        return "fields"
    return "text"


def evidence_message(ev: dict[str, Any], incident_id: int, rule: str) -> Message:
    mark = STATUS_MARK.get(ev["status"], "?")
    title = escape(ev["title"])
    head = (f"{mark} *{title}* · {inline_code(str(ev['collector']))} · {escape(str(ev['status']))}"
            f" in {ev['duration_ms']:.0f} ms" + (" · shared with another incident" if ev.get("shared") else ""))
    blocks: list[dict[str, Any]] = [section(head)]
    payload = ev.get("payload") or {}
    kind = evidence_kind(payload)
    cut = False
    if kind == "rows":
        block, cut = code_section(_table(payload["rows"]))
        blocks.append(block)
    elif kind == "fields":
        blocks.append(fields_section([(str(k), _scalar(v)) for k, v in payload["fields"].items()]))
        if len(payload["fields"]) > MAX_FIELDS:
            blocks.append(context(f"… {len(payload['fields']) - MAX_FIELDS} more field(s) in the attached text"))
            cut = True
    if kind in ("text", "series") and ev.get("text"):
        block, cut = code_section(ev["text"])
        blocks.append(block)
    if kind == "series":
        blocks.append(context("Chart attached below"))
    attachments = []
    full = ev.get("full_text") or ev.get("text") or ""
    if (cut or ev.get("truncated") or ev.get("full_text")) and full:
        attachments.append(Attachment(f"incident-{incident_id}-{_slug(rule)}-{_slug(ev['step'])}.txt",
                                      f"{ev['title']} (full output)", full.encode()))
    text = escape(f"{mark} {ev['title']} ({ev['status']})")
    return Message(fit(text, SECTION_CHARS)[0], cap_blocks(blocks), attachments)


def _slug(value: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in value)[:60] or "x"


def decision_message(decision: dict[str, Any]) -> Message:
    outcome = str(decision["outcome"])
    icon = OUTCOME_ICON.get(outcome, ":grey_question:")
    head = f"{icon} *{escape(decision['action'])}* on {inline_code(str(decision['target']))} — *{escape(outcome)}*"
    if decision.get("mode"):
        head += f" ({escape(str(decision['mode']))})"
    lines = [head]
    if decision.get("description"):
        lines.append(escape(str(decision["description"])))
    if decision.get("reason"):
        lines.append(f"_Why:_ {escape(str(decision['reason']))}")
    blocks: list[dict[str, Any]] = [section("\n".join(lines))]
    if decision.get("output"):
        blocks.append(code_section(json.dumps(decision["output"], indent=2, sort_keys=True, default=str))[0])
    if decision.get("verification"):
        blocks.append(context(f":mag: Verification: {escape(str(decision['verification']))}"))
    approval = decision.get("approval_id")
    if outcome == "pending" and approval is not None:
        blocks.append(context("This action waits for a person: approve to run it, deny to drop it."))
        blocks.append({"type": "actions", "block_id": f"approval:{approval}", "elements": [
            {"type": "button", "action_id": "approve", "style": "primary", "value": str(approval),
             "text": {"type": "plain_text", "text": "Approve"}},
            {"type": "button", "action_id": "deny", "style": "danger", "value": str(approval),
             "text": {"type": "plain_text", "text": "Deny"}},
        ]})
    text = escape(f"{decision['action']} on {decision['target']}: {outcome}")
    return Message(fit(text, SECTION_CHARS)[0], blocks)


def checklist_message(rule: str, items: list[str]) -> Message:
    lines = [f"*Checklist* (rule {inline_code(rule)})", *(f"☐ {escape(item)}" for item in items)]
    return Message(escape(f"Checklist for {rule}"), [section("\n".join(lines))])


def errors_message(rule: str, errors: list[str]) -> Message:
    lines = [f":warning: *Steps of rule {inline_code(rule)} that could not run*", *(f"• {escape(e)}" for e in errors)]
    return Message(escape(f"Rule {rule}: {len(errors)} step error(s)"), [section("\n".join(lines))])


def refire_message(incident: dict[str, Any]) -> Message:
    text = f":repeat: Fired again at {when(incident.get('starts_at'))} (incident #{incident['id']})"
    return Message(text, [section(text)])


def thread_messages(incident: dict[str, Any], bundles: list[dict[str, Any]]) -> list[Message]:
    """The replies for one processed incident: per rule its errors, evidence, decisions and checklist."""
    messages = []
    for bundle in bundles:
        if bundle.get("errors"):
            messages.append(errors_message(bundle["rule"], bundle["errors"]))
        messages += [evidence_message(ev, int(incident["id"]), bundle["rule"]) for ev in bundle.get("evidence", [])]
        messages += [decision_message(d) for d in bundle.get("decisions", [])]
        if bundle.get("checklist"):
            messages.append(checklist_message(bundle["rule"], bundle["checklist"]))
    return messages
