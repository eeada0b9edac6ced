"""The one layer every action goes through. It decides, records and only then acts.

In order, a step is refused (`skipped`, with the deciding guard and why) by: the kill switch (config,
RESPONDER_KILL_SWITCH, or the stored switch set through the API), a resolved alert, an alert older
than `max_alert_age`, a target or namespace outside the allow-lists, a false `when:` condition. Then,
in enforce mode, the target's lock (fail closed if the lock service is down), and, recorded in the same
transaction as the decision itself, a duplicate decision for the incident's step, the cooldown and the
budgets. Only then does the action run; its row says `executing` before it starts and `executed` or
`failed` after. Dry-run goes through the same checks (counting earlier dry-runs) and changes nothing.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from responder.config import MitigationsConfig
from responder.evidence import Evidence
from responder.jobs import VERIFY, VerifyRef
from responder.metrics import Metrics
from responder.mitigations import budgets
from responder.mitigations.base import Action, ActionContext, registry
from responder.mitigations.budgets import Limits
from responder.mitigations.locks import LockUnavailable, TargetLocks
from responder.models import Incident, IncidentStatus
from responder.redaction import Redactor
from responder.rules.conditions import evaluate
from responder.rules.model import MitigationSpec, Rule
from responder.steps import RenderedStep
from responder.store.actions import ActionStore
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
    action_id: int | None = None
    # Set when outcome is `pending`: the id a person approves or denies (Slack button value).
    approval_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "action": self.action, "target": self.target, "mode": self.mode,
            "outcome": self.outcome, "description": self.description, "params": self.params,
            "guard": self.guard, "reason": self.reason, "output": self.output,
            "created_at": self.created_at, "finished_at": self.finished_at,
            "action_id": self.action_id, "approval_id": self.approval_id,
        }


def kill_switch_on(config: MitigationsConfig) -> bool:
    return config.kill_switch or os.environ.get("RESPONDER_KILL_SWITCH", "").lower() in ("1", "true", "yes", "on")


class Guard:
    def __init__(self, config: MitigationsConfig, targets: Targets, actions: ActionStore, locks: TargetLocks,
                 metrics: Metrics | None = None, redactor: Redactor | None = None) -> None:
        self.config = config
        self.targets = targets
        self.actions = actions
        self.locks = locks
        self.metrics = metrics
        # What a target answers (output, error text) leaves through the audit, Slack, the CLI and /api:
        # it is redacted like evidence before it is recorded or logged.
        self.redactor = redactor or Redactor()

    def mode_for(self, rule: Rule, spec: MitigationSpec) -> str:
        # The most cautious setting wins: enforce only if global, rule and step all allow it.
        modes = [self.config.mode, rule.mode or self.config.mode, spec.mode or rule.mode or self.config.mode]
        return "enforce" if all(m == "enforce" for m in modes) else "dry-run"

    def limits_for(self, spec: MitigationSpec) -> Limits:
        return Limits(
            cooldown=self.config.cooldown if spec.cooldown is None else spec.cooldown,
            max_per_day=self.config.max_per_day if spec.max_per_day is None else spec.max_per_day,
            max_per_hour=self.config.max_per_hour,
        )

    def count(self, decision: Decision) -> None:
        if self.metrics is not None:
            self.metrics.actions.labels(decision.action, decision.outcome, decision.guard or "").inc()

    async def run(self, rule: Rule, steps: Sequence[RenderedStep], incident: Incident,
                  evidence: Sequence[Evidence]) -> list[Decision]:
        """Decide each step once per distinct target: one rollback for a deployment, however many of its
        pods are members of the incident (every guard still applies to that target)."""
        decisions = []
        # Per rule step (one `for_each` step renders once per member) and target; two steps of the rule
        # acting on one target are two decisions, as written.
        targets: set[tuple[int, str]] = set()
        for step in steps:
            key = (id(step.spec), registry.get(step.type)().target(step.params))
            if key in targets:
                continue
            targets.add(key)
            decision = await self._decide_and_act(rule, step, incident, evidence)
            self.count(decision)
            decisions.append(decision)
        return decisions

    async def kill_switch_reason(self) -> str | None:
        if kill_switch_on(self.config):
            return "the kill switch is on (configuration or RESPONDER_KILL_SWITCH)"
        stored = await self.actions.kill_switch()
        if stored is not None:
            return f"the kill switch was turned on by {stored['by']}: {stored['reason'] or 'no reason given'}"
        return None

    async def preview(self, rule: Rule, steps: Sequence[RenderedStep], incident: Incident,
                      evidence: Sequence[Evidence] | None = None) -> list[Decision]:
        """What each step would meet now, deciding and recording nothing and running no collector:
        `when:` conditions are evaluated on `evidence` when it is given (rule tests), else only reported."""
        decisions = []
        for step in steps:
            action, spec, decision = self._new_decision(rule, step, "allowed")
            refusal = await self._refusal(action, step, spec, decision.target, incident, evidence)
            guard, reason = refusal or await self.actions.check(
                budgets.policy(None, rule.name, decision.as_dict(), self.limits_for(spec)))
            if guard is not None:
                decision.outcome, decision.guard, decision.reason = "blocked", guard, reason
            elif spec.when and evidence is None:
                decision.reason = "if its conditions hold on the evidence gathered"
            decisions.append(decision)
        return decisions

    def _new_decision(self, rule: Rule, step: RenderedStep, outcome: str
                      ) -> tuple[Action[Any], MitigationSpec, Decision]:
        action = registry.get(step.type)()
        spec = step.spec
        assert isinstance(spec, MitigationSpec)
        decision = Decision(step.id, step.type, action.target(step.params), self.mode_for(rule, spec), outcome,
                            action.describe(step.params), step.params.model_dump(mode="json", by_alias=True))
        return action, spec, decision

    async def _refusal(self, action: Action[Any], step: RenderedStep, spec: MitigationSpec, target: str,
                       incident: Incident, evidence: Sequence[Evidence] | None) -> tuple[str, str] | None:
        if (why := await self.kill_switch_reason()) is not None:
            return "kill_switch", why
        if incident.status is IncidentStatus.RESOLVED:
            return "resolved", "the alert is already resolved"
        age = time.time() - incident.starts_at
        if age > self.config.max_alert_age:
            return "alert_age", f"the alert started {age:.0f}s ago (max_alert_age {self.config.max_alert_age:g}s)"
        if self.config.allow_targets and not any(fnmatch.fnmatchcase(target, p) for p in self.config.allow_targets):
            return "allow_list", f"target {target} is not in mitigations.allow_targets"
        namespace = action.namespace(step.params)
        if (self.config.allow_namespaces and namespace is not None
                and not any(fnmatch.fnmatchcase(namespace, p) for p in self.config.allow_namespaces)):
            return "allow_list", f"namespace {namespace} is not in mitigations.allow_namespaces"
        if evidence is not None:
            holds, why_not = evaluate(spec.when, incident, evidence)
            if not holds:
                return "condition", why_not
        return None

    async def _decide_and_act(self, rule: Rule, step: RenderedStep, incident: Incident,
                              evidence: Sequence[Evidence]) -> Decision:
        action, spec, decision = self._new_decision(rule, step, "pending")
        target = decision.target
        refusal = await self._refusal(action, step, spec, target, incident, evidence)
        if refusal is not None:
            return await self._record_skip(rule, incident, decision, *refusal)
        if decision.mode == "dry-run":
            decision.reason = f"would: {decision.description}"
            return await self._reserve(rule, incident, decision, spec)
        try:
            async with self.locks.hold(target) as held:
                if not held:
                    return await self._record_skip(rule, incident, decision, "lock",
                                                   f"another decision is acting on {target} right now")
                await self._reserve(rule, incident, decision, spec)
                if decision.outcome != "executing":
                    return decision
                assert decision.action_id is not None
                await self.execute(action, step.params, incident, decision, spec, rule.name)
                return decision
        except LockUnavailable as exc:
            log.warning("not acting on %s: %s", target, exc)
            return await self._record_skip(rule, incident, decision, "lock", f"fail-closed: {exc}")

    async def execute(self, action: Action[Any], params: Any, incident: Incident, decision: Decision,
                      spec: MitigationSpec | None, rule: str) -> None:
        """Run an action whose `executing` row is already stored, and record how it went."""
        assert decision.action_id is not None
        try:
            async with asyncio.timeout(self.config.action_timeout):
                output = await action.execute(params, ActionContext(incident, self.targets))
            decision.output = self.redactor.tree(output)
            decision.outcome = "executed"
        except Exception as exc:
            decision.outcome = "failed"
            decision.reason = self.redactor.text(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            log.warning("action %s on %s failed: %s", decision.action, decision.target, decision.reason)
        decision.finished_at = time.time()
        await self.actions.finish(decision.action_id, decision.outcome, output=decision.output,
                                  reason=decision.reason)
        if decision.outcome == "executed" and spec is not None and spec.verify is not None:
            await self.actions.store.queue.schedule(
                VERIFY.new(f"verify:{decision.action_id}",
                           VerifyRef(action_id=decision.action_id, rule=rule, step=decision.step),
                           incident_id=incident.id),
                delay=spec.verify.after,
            )

    async def _reserve(self, rule: Rule, incident: Incident, decision: Decision, spec: MitigationSpec) -> Decision:
        timeout = self.config.approvals.timeout if spec.requires_approval and decision.mode == "enforce" else None
        row = decision.as_dict()
        reservation = await self.actions.reserve(incident.id, rule.name, row,
                                                 budgets.policy(incident.id, rule.name, row, self.limits_for(spec)),
                                                 approval_timeout=timeout)
        decision.action_id = reservation.action_id
        decision.approval_id = reservation.approval_id
        decision.outcome, decision.guard, decision.reason = reservation.outcome, reservation.guard, reservation.reason
        if decision.outcome == "pending":
            decision.reason = f"waiting for approval {reservation.approval_id}: {decision.description}"
        if decision.outcome in ("skipped", "dry-run"):
            decision.finished_at = time.time()
        return decision

    async def _record_skip(self, rule: Rule, incident: Incident, decision: Decision, guard: str,
                           reason: str) -> Decision:
        decision.outcome, decision.guard, decision.reason = "skipped", guard, reason
        decision.finished_at = time.time()
        decision.action_id = await self.actions.record(incident.id, rule.name, decision.as_dict())
        return decision

