"""The one layer every action goes through. It decides, records and only then acts.

Outcomes: `executed`, `dry-run`, `skipped` (with the deciding guard and why) and `failed`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from responder.collectors.base import Evidence
from responder.config import MitigationsConfig
from responder.metrics import Metrics
from responder.mitigations.base import ActionContext, registry
from responder.models import Incident, IncidentStatus
from responder.rules.engine import RenderedStep
from responder.rules.model import MitigationSpec, Rule
from responder.targets import Targets

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Decision:
    step: str
    action: str
    target: str
    mode: str
    outcome: str
    description: str
    params: dict[str, Any]
    guard: str | None = None
    reason: str = ""
    output: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "action": self.action, "target": self.target, "mode": self.mode,
            "outcome": self.outcome, "description": self.description, "params": self.params,
            "guard": self.guard, "reason": self.reason, "output": self.output,
            "created_at": self.created_at, "finished_at": self.finished_at,
        }


def kill_switch_on(config: MitigationsConfig) -> bool:
    return config.kill_switch or os.environ.get("RESPONDER_KILL_SWITCH", "").lower() in ("1", "true", "yes", "on")


class Guard:
    def __init__(self, config: MitigationsConfig, targets: Targets, metrics: Metrics | None = None) -> None:
        self.config = config
        self.targets = targets
        self.metrics = metrics

    def mode_for(self, rule: Rule, spec: MitigationSpec) -> str:
        # The most cautious setting wins: enforce only if global, rule and step all allow it.
        modes = [self.config.mode, rule.mode or self.config.mode, spec.mode or rule.mode or self.config.mode]
        return "enforce" if all(m == "enforce" for m in modes) else "dry-run"

    async def run(self, rule: Rule, steps: Sequence[RenderedStep], incident: Incident,
                  evidence: Sequence[Evidence]) -> list[Decision]:
        decisions = []
        for step in steps:
            decision = await self._decide_and_act(rule, step, incident)
            if self.metrics is not None:
                self.metrics.actions.labels(decision.action, decision.outcome, decision.guard or "").inc()
            decisions.append(decision)
        return decisions

    async def _decide_and_act(self, rule: Rule, step: RenderedStep, incident: Incident) -> Decision:
        action = registry.get(step.type)()
        spec = step.spec
        assert isinstance(spec, MitigationSpec)
        mode = self.mode_for(rule, spec)
        decision = Decision(step.id, step.type, action.target(step.params), mode, "pending",
                            action.describe(step.params), step.params.model_dump(mode="json"))
        if kill_switch_on(self.config):
            return self._skip(decision, "kill_switch", "the kill switch is on: no action runs")
        if incident.status is IncidentStatus.RESOLVED:
            return self._skip(decision, "resolved", "the alert is already resolved")
        if mode == "dry-run":
            decision.outcome = "dry-run"
            decision.reason = f"would: {decision.description}"
            decision.finished_at = time.time()
            return decision
        try:
            decision.output = await action.execute(step.params, ActionContext(incident, self.targets))
            decision.outcome = "executed"
        except Exception as exc:
            log.warning("action %s on %s failed: %s", step.type, decision.target, exc)
            decision.outcome = "failed"
            decision.reason = f"{type(exc).__name__}: {exc}"
        decision.finished_at = time.time()
        return decision

    @staticmethod
    def _skip(decision: Decision, guard: str, reason: str) -> Decision:
        decision.outcome, decision.guard, decision.reason = "skipped", guard, reason
        decision.finished_at = time.time()
        return decision
