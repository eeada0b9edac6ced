"""An incident's full view, read back from the store: its members (the alerts of its group), the incidents
of the same group before and after it, its alert deliveries, evidence, decisions with their guard reasons,
checklist, Slack thread and delivery state, and one timeline of all of it.

One place assembles it, for the web console (`responder/ui`) and `responder incidents show`. Everything in
it passes through the daemon's Redactor: labels and annotations come from whoever sent the alert.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from responder.models import Incident, Member
from responder.redaction import Redactor
from responder.store import Store
from responder.store.actions import ActionStore
from responder.store.db import Row
from responder.store.history import History

if TYPE_CHECKING:  # the rule engine pulls in every target client; the view only reads rule checklists
    from responder.rules.engine import RuleSet


def decision_row(row: Row) -> dict[str, Any]:
    """One stored mitigation decision (an `actions` row joined with its approval), JSON fields parsed."""
    fields = {k: row[k] for k in ("id", "incident_id", "rule", "step", "action", "target", "mode", "outcome",
                                  "guard", "reason", "description", "actor", "created_at", "finished_at",
                                  "approval_id", "approval_state")}
    fields["params"] = json.loads(row["params"])
    fields["output"] = json.loads(row["output"])
    fields["verification"] = json.loads(row["verification"]) if row["verification"] else None
    fields["verified_at"] = row["verified_at"]
    return fields


def evidence_row(row: Row) -> dict[str, Any]:
    payload = json.loads(row["payload"])
    series = payload.get("series") if isinstance(payload, dict) else None
    return {
        "id": int(row["id"]), "rule": row["rule"], "step": row["step"], "collector": row["collector"],
        "title": row["title"], "status": row["status"], "duration_ms": float(row["duration_ms"]),
        "payload": payload, "text": row["text"], "full_text": row["full_text"], "truncated": bool(row["truncated"]),
        "created_at": float(row["created_at"]),
        # Gathered once for a group and reused by another incident (a cache hit), not collected for this one.
        "shared": bool(row["shared"]),
        # Range queries keep their samples; an instant query has one value per series and no chart.
        "chart": isinstance(series, list) and any(isinstance(s, dict) and s.get("values") for s in series),
    }


def slack_link(channel_id: str, ts: str | None, workspace_url: str | None) -> str:
    """A link to the thread's parent message when the workspace is known, else Slack's redirect to the channel."""
    if workspace_url and ts:
        return f"{workspace_url.rstrip('/')}/archives/{channel_id}/p{ts.replace('.', '')}"
    return f"https://slack.com/app_redirect?channel={channel_id}"


@dataclass(frozen=True, slots=True)
class Event:
    at: float
    what: str
    kind: str  # alert, incident, evidence, decision, approval, slack, sink


@dataclass
class IncidentView:
    incident: Incident
    processed_at: float | None
    alerts: list[dict[str, Any]]
    evidence: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    # (rule, items) for each matched rule, from the rule as loaded now.
    checklists: list[tuple[str, list[str]]]
    slack: dict[str, Any] | None
    deliveries: list[dict[str, Any]]
    approvals: list[dict[str, Any]] = field(default_factory=list)
    # The alerts of the incident's group, firing first; the incidents of the same group it follows or
    # that followed it (`relation`: previous or next).
    members: list[dict[str, Any]] = field(default_factory=list)
    linked: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rules(self) -> list[str]:
        return [r for r in (self.incident.rule or "").split(",") if r]

    def timeline(self) -> list[Event]:
        i = self.incident
        events = [Event(i.starts_at, f"{i.alertname or 'alert'} started firing (according to {i.source})", "alert"),
                  Event(i.opened_at, f"incident #{i.id} opened (group {i.group_key or '-'})", "incident")]
        events += [Event(float(other["opened_at"]), f"incident #{other['id']} of the same group opened", "incident")
                   for other in self.linked if other["relation"] == "next"]
        for alert in self.alerts[1:]:
            events.append(Event(float(alert["received_at"]), f"{alert['status']} alert received "
                                f"(payload {alert['payload_id']})", "alert"))
        if self.processed_at is not None:
            outcome = f"matched {', '.join(self.rules)}" if self.rules else "no rule matched"
            events.append(Event(self.processed_at, f"processed: {outcome}, {len(self.evidence)} evidence item(s)",
                                "incident"))
        for d in self.decisions:
            why = f" ({d['guard']}: {d['reason']})" if d["guard"] else ""
            events.append(Event(float(d["created_at"]), f"{d['step']}: {d['action']} on {d['target']} — "
                                f"{d['outcome']}{why}", "decision"))
            if d["verified_at"] is not None and d["verification"] is not None:
                recovered = "recovered" if d["verification"].get("recovered") else "NOT recovered"
                events.append(Event(float(d["verified_at"]), f"{d['step']}: verification: {recovered}", "decision"))
        for a in self.approvals:
            events.append(Event(float(a["requested_at"]), f"approval #{a['id']} requested for {a['action']}",
                                "approval"))
            if a["decided_at"] is not None:
                events.append(Event(float(a["decided_at"]), f"approval #{a['id']} {a['state']}"
                                    f"{' by ' + a['decided_by'] if a['decided_by'] else ''}", "approval"))
        for job in self.deliveries:
            # Each thread reply and upload is in `deliveries`; the timeline keeps the events, the parent
            # message, and anything that did not go through.
            routine = job["status"] == "done" and job["kind"] in ("slack.reply", "slack.upload", "slack.update")
            if job["finished_at"] is not None and not routine:
                state = "delivered" if job["status"] == "done" else job["status"]
                events.append(Event(float(job["finished_at"]), f"{job['queue']}: {job['kind']} {state}", "sink"))
        if i.resolved_at is not None:
            by_hand = f" by hand by {i.extra['resolved_by']}: {i.extra.get('resolution', '')}" \
                if i.extra.get("resolved_by") else ""
            events.append(Event(float(i.resolved_at), f"resolved{by_hand}", "incident"))
        return sorted(events, key=lambda e: e.at)

    def as_json(self) -> dict[str, Any]:
        incident = asdict(self.incident)
        incident["status"] = self.incident.status.value
        return {
            "incident": incident | {"processed_at": self.processed_at},
            "alerts": self.alerts,
            "evidence": self.evidence,
            "decisions": self.decisions,
            "approvals": self.approvals,
            "members": self.members,
            "linked": self.linked,
            "checklists": [{"rule": rule, "items": items} for rule, items in self.checklists],
            "slack": self.slack,
            "deliveries": self.deliveries,
            "timeline": [asdict(e) for e in self.timeline()],
        }


async def load_incident_view(store: Store, incident_id: int, redactor: Redactor, *, ruleset: RuleSet | None = None,
                             slack_workspace_url: str | None = None) -> IncidentView | None:
    incident = await store.get_incident(incident_id)
    if incident is None:
        return None
    history = History(store)
    rules = {r.name: r for r in ruleset.rules} if ruleset is not None else {}
    names = [r for r in (incident.rule or "").split(",") if r]
    thread = await history.slack_thread(incident_id)
    slack = None
    if thread is not None:
        slack = {k: thread[k] for k in ("channel", "channel_id", "ts", "role")}
        slack["url"] = slack_link(thread["channel_id"], thread["ts"], slack_workspace_url) \
            if thread["channel_id"] else None
    decisions = sorted((decision_row(r) for r in await ActionStore(store).recent(incident_id)), key=lambda d: d["id"])
    view = IncidentView(
        incident=replace(incident, labels=redactor.tree(incident.labels),
                         annotations=redactor.tree(incident.annotations), extra=redactor.tree(incident.extra),
                         error=redactor.text(incident.error) if incident.error else None),
        processed_at=incident.processed_at,
        alerts=[dict(r) for r in await history.alerts(incident_id)],
        # Evidence was redacted before it was stored; again here, in case the redaction rules grew since.
        evidence=redactor.tree([evidence_row(r) for r in await store.evidence(incident_id)]),
        decisions=redactor.tree(decisions),
        checklists=[(name, list(rules[name].checklist)) for name in names if name in rules and rules[name].checklist],
        slack=slack,
        deliveries=redactor.tree([dict(r) for r in await history.deliveries(incident_id)]),
        approvals=[dict(r) for r in await history.approvals(incident_id)],
        members=redactor.tree([member_row(m) for m in await store.members(incident_id)]),
        linked=[linked_row(other, incident) for other in await store.linked_incidents(incident)],
    )
    return view


def member_row(member: Member) -> dict[str, Any]:
    return {"fingerprint": member.fingerprint, "starts_at": member.starts_at, "status": member.status.value,
            "alertname": member.name, "labels": member.labels, "annotations": member.annotations,
            "first_seen": member.first_seen, "resolved_at": member.resolved_at}


def linked_row(other: Incident, incident: Incident) -> dict[str, Any]:
    return {"id": other.id, "relation": "previous" if other.id == incident.previous_id else "next",
            "status": other.status.value, "opened_at": other.opened_at, "resolved_at": other.resolved_at,
            "members_total": other.members_total}
