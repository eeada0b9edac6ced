"""What a rule set would do with an alert, without running anything: used by `explain` and `test-rules`."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from responder.config import Config
from responder.evidence import Evidence
from responder.mitigations.guard import Decision, Guard
from responder.mitigations.locks import LocalLocks
from responder.models import Alert, AlertStatus, Incident, IncidentStatus, common_labels
from responder.rules.conditions import evaluate, parse_condition
from responder.rules.engine import RuleSet, RuleVerdict, render_steps
from responder.rules.grouping import group_key
from responder.steps import RenderedStep
from responder.store import Store
from responder.store.actions import ActionStore
from responder.targets import Targets


@dataclass
class RulePreview:
    rule: str
    # The incident the alert falls into under this rule: its group key (see rules/grouping.py).
    group_key: str = ""
    collectors: list[RenderedStep] = field(default_factory=list)
    mitigations: list[RenderedStep] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class AlertPreview:
    alert: Alert
    verdicts: list[RuleVerdict]
    rules: list[RulePreview]


def as_incident(alert: Alert) -> Incident:
    now = time.time()
    return Incident(
        id=0, source=alert.source, fingerprint=alert.fingerprint, alertname=alert.name,
        status=IncidentStatus.RESOLVED if alert.status is AlertStatus.RESOLVED else IncidentStatus.OPEN,
        starts_at=alert.starts_at, opened_at=now, last_seen=now, deliveries=1, labels=alert.labels,
        annotations=alert.annotations, last_alert_id=0, extra=alert.extra,
    )


async def preview(config: Config, ruleset: RuleSet, store: Store, alert: Alert,
                  evidence: Sequence[Evidence] | None = None, members: Sequence[Alert] = ()) -> AlertPreview:
    """Matching verdicts, the group key, rendered steps, and the guards each mitigation would meet now
    (cooldowns and budgets read from `store`; `when:` conditions tested on `evidence` if given; nothing is
    recorded, no collector or action runs). The steps are rendered for the group of `members` (default:
    the alert alone), as its incident would be: the labels they share, `for_each` per firing member."""
    group = list(members) or [alert]
    firing = [m for m in group if m.status is AlertStatus.FIRING] or group
    shared = dataclasses.replace(alert, labels=common_labels([m.labels for m in firing]),
                                 annotations=common_labels([m.annotations for m in firing]))
    async with Targets(config) as targets:
        guard = Guard(config.mitigations, targets, ActionStore(store), LocalLocks())
        incident = as_incident(shared)
        rules = []
        for rule in ruleset.match(alert):
            collectors, mitigations, errors = render_steps(rule, shared, firing)
            decisions = await guard.preview(rule, mitigations, incident, evidence)
            rules.append(RulePreview(rule.name, group_key(rule, alert), collectors, mitigations, decisions,
                                     [str(e) for e in errors]))
    return AlertPreview(alert, ruleset.explain(alert), rules)


def why_not(alert: Alert, verdict: RuleVerdict) -> list[str]:
    """Why a rule did not match: its wrong source, and each failed matcher with the label's actual value."""
    why = [f"{m} (label is {json.dumps(alert.labels.get(m.name, ''))})" for m in verdict.failed]
    if verdict.wrong_source:
        why.insert(0, f"source {alert.source} not in {verdict.rule.sources}")
    return why


def conditions_now(conditions: list[str], incident: Incident) -> list[tuple[str, str]]:
    """Each `when:` condition with what it says now (explain, the console). Conditions on evidence cannot be
    judged without the collectors, which explain does not run: `replay` runs them."""
    states = []
    for text in conditions:
        comparison = parse_condition(text)
        steps = [o.reference.split(".")[1] for o in (comparison.left, comparison.right)
                 if o.reference and o.reference.startswith("evidence.")]
        if steps:
            states.append((text, f"depends on the evidence of step {steps[0]!r} (replay collects it)"))
            continue
        holds, why = evaluate([text], incident, [])
        states.append((text, "true now" if holds else why.removeprefix(f"condition {text!r} is ")))
    return states


def step_params(step: RenderedStep) -> dict[str, Any]:
    params: dict[str, Any] = step.params.model_dump(mode="json", by_alias=True)
    return params
