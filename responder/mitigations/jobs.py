"""Jobs of the `mitigations` queue: run an approved action once, expire an unanswered approval, and
verify (after a delay) whether an executed action helped."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from responder.collectors.base import CollectorContext
from responder.collectors.runner import EvidenceLimits, run_collectors
from responder.config import PrometheusTarget
from responder.events import Bundle, Note
from responder.evidence import Evidence
from responder.jobs import APPROVAL_EXECUTE, APPROVAL_EXPIRE, INCIDENT_NOTE, VERIFY, ApprovalRef, JobTable, VerifyRef
from responder.mitigations.base import registry
from responder.mitigations.guard import Decision, Guard
from responder.mitigations.locks import LockUnavailable
from responder.models import Incident, IncidentStatus, Job, group_view
from responder.redaction import Redactor
from responder.rules.conditions import evaluate
from responder.rules.engine import RuleSet, render_steps
from responder.rules.model import MitigationSpec, PrometheusCheck, VerifySpec
from responder.store import Store
from responder.store.actions import ActionStore
from responder.store.db import Connection, Row

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)


def find_spec(ruleset: RuleSet, rule_name: str, step_id: str) -> MitigationSpec | None:
    for rule in ruleset.rules:
        if rule.name == rule_name:
            for index, spec in enumerate(rule.mitigations):
                if spec.step_id(index) == step_id:
                    return spec
    return None


@dataclass
class MitigationJobs:
    store: Store
    actions: ActionStore
    guard: Guard
    ruleset: RuleSet
    limits: EvidenceLimits
    redactor: Redactor
    # Where each outcome is told (an `incident.note` per sink), committed with the job's completion.
    sink_queues: Sequence[str] = ()

    def register(self, table: JobTable) -> None:
        table.add(APPROVAL_EXPIRE, self.expire)
        table.add(APPROVAL_EXECUTE, self.execute)
        table.add(VERIFY, self.verify)

    async def expire(self, job: Job, ref: ApprovalRef) -> None:
        expired: list[str] = []

        async def writes(conn: Connection) -> None:
            # Expired and told in the job's own completion: a job run twice expires once and tells once.
            expired.clear()
            action = await ActionStore.expire(conn, ref.approval_id)
            if action is None:
                return
            expired.append(action)
            if job.incident_id is None:
                return
            note = Note(kind="expired", text=f"{action} expired: nobody answered in time", phase="firing")
            for queue in self.sink_queues:
                await self.store.queue.enqueue(conn, INCIDENT_NOTE.new(f"incident:{job.incident_id}", note,
                                                                       incident_id=job.incident_id, queue=queue))

        await self.store.queue.finish(job, result={"approval_id": ref.approval_id}, writes=writes)
        if expired and self.guard.metrics is not None:
            self.guard.metrics.actions.labels(expired[0], "expired", "approval").inc()

    async def execute(self, job: Job, ref: ApprovalRef) -> None:
        await self._finish(job, *await self.execute_approved(ref.approval_id))

    async def verify(self, job: Job, ref: VerifyRef) -> None:
        await self._finish(job, *await self.verify_action(ref.action_id))

    async def _finish(self, job: Job, result: dict[str, Any], notes: list[Note]) -> None:
        """Complete the job, with its outcome told to every sink in the same transaction."""
        follow_ups = [INCIDENT_NOTE.new(f"incident:{job.incident_id}", note, incident_id=job.incident_id, queue=queue)
                      for note in notes for queue in self.sink_queues] if job.incident_id is not None else []
        await self.store.queue.finish(job, result=result, follow_ups=follow_ups)

    async def execute_approved(self, approval_id: int) -> tuple[dict[str, Any], list[Note]]:
        row = await self.actions.start_approved(approval_id)
        if row is None:  # not approved, or already started by an earlier run of this job
            return {"executed": False}, []
        try:
            action = registry.get(row["action"])()
            params = action.params_model.model_validate(json.loads(row["params"]))
            incident = await self.store.get_incident(int(row["incident_id"]))
            if incident is None:
                raise LookupError(f"incident {row['incident_id']} is gone")
        except Exception as exc:  # the row says executing: it must not stay that way
            await self.actions.finish(int(row["id"]), "failed", reason=f"cannot run the approved action: {exc}")
            raise
        decision = Decision(row["step"], row["action"], row["target"], row["mode"], "executing", row["description"],
                            json.loads(row["params"]), action_id=int(row["id"]), approval_id=approval_id)
        refusal = await self.guard.kill_switch_reason()
        guard = "kill_switch"
        if refusal is None and incident.status is IncidentStatus.RESOLVED:
            refusal, guard = "the alert resolved before the action was approved", "resolved"
        if refusal is None:
            try:
                async with self.guard.locks.hold(decision.target) as held:
                    if held:
                        await self.guard.execute(action, params, incident, decision,
                                                 find_spec(self.ruleset, row["rule"], row["step"]), row["rule"])
                    else:
                        refusal, guard = f"another decision is acting on {decision.target} right now", "lock"
            except LockUnavailable as exc:
                refusal, guard = f"fail-closed: {exc}", "lock"
        if refusal is not None:
            decision.outcome, decision.guard, decision.reason = "skipped", guard, refusal
            await self.actions.finish(decision.action_id or 0, "skipped", reason=refusal, guard=guard)
        self.guard.count(decision)
        note = Note(kind=decision.outcome, text=f"{decision.action} on {decision.target}: {decision.outcome}",
                    detail=decision.reason, output=decision.output,
                    phase="mitigating" if decision.outcome == "executed" else "firing")
        return {"executed": decision.outcome == "executed", "outcome": decision.outcome}, [note]

    async def verify_action(self, action_id: int) -> tuple[dict[str, Any], list[Note]]:
        row = await self.actions.get(action_id)
        spec = find_spec(self.ruleset, row["rule"], row["step"]) if row is not None else None
        if row is None or spec is None or spec.verify is None or row["incident_id"] is None:
            return {"verified": False, "note": "the action or its rule's verify check no longer exists"}, []
        incident = await self.store.get_incident(int(row["incident_id"]))
        assert incident is not None
        evidence: list[Evidence] = []
        try:
            recovered, detail, evidence = await self._check(spec.verify, row, incident)
        except Exception as exc:  # a check that cannot run cannot say the action helped
            recovered, detail = False, f"the check failed: {type(exc).__name__}: {exc}"
        await self.actions.record_verification(action_id, recovered, detail)
        log.info("verification of action %s: %s (%s)", action_id, "recovered" if recovered else "NOT recovered",
                 detail, extra={"incident": incident.id})
        rule = next((r for r in self.ruleset.rules if r.name == row["rule"]), None)
        what = f"{row['action']} on {row['target']}"
        # The verifying evidence travels inline: it is not stored as the incident's evidence.
        bundles = [Bundle(rule=row["rule"], evidence=evidence)] if evidence else []
        note = Note(kind="recovered", text=f"Verified: {what} helped", detail=detail, bundles=bundles) \
            if recovered else Note(kind="not_recovered", text=f"Not recovered after {what}: escalating",
                                   detail=detail, phase="firing", bundles=bundles,
                                   mention=rule.slack.escalation if rule is not None else None)
        return {"recovered": recovered, "detail": detail}, [note]

    async def _check(self, verify: VerifySpec, row: Row, incident: Incident) -> tuple[bool, str, list[Evidence]]:
        """Whether the incident recovered, why, and the evidence a collector check gathered."""
        if verify.prometheus is not None:
            target: PrometheusTarget = self.guard.targets.spec("prometheus", verify.prometheus.target)
            value = await query_prometheus(await self.guard.targets.http(), target, verify.prometheus.query)
            return (*threshold_met(verify.prometheus, value), [])
        rule = next(r for r in self.ruleset.rules if r.name == row["rule"])
        incident, alert, firing = group_view(incident, await self.store.members(incident.id))
        collectors, _, _ = render_steps(rule, alert, firing)
        steps = [s for s in collectors if s.id == verify.collector]
        if not steps:
            return False, f"collector step {verify.collector!r} could not be rendered for this incident", []
        evidence = await run_collectors(steps, CollectorContext(incident, self.guard.targets), limits=self.limits,
                                        redactor=self.redactor)
        holds, why = evaluate(verify.when, incident, evidence)
        return holds, "all verify conditions hold" if holds else why, list(evidence)


def threshold_met(check: PrometheusCheck, value: float | None) -> tuple[bool, str]:
    if value is None:
        return False, f"{check.query!r} returned no data"
    if check.below is not None:
        return value < check.below, f"{check.query!r} = {value:g} (recovered below {check.below:g})"
    assert check.above is not None
    return value > check.above, f"{check.query!r} = {value:g} (recovered above {check.above:g})"


async def query_prometheus(session: aiohttp.ClientSession, target: PrometheusTarget, query: str,
                           timeout: float = 10.0) -> float | None:
    """The first value of an instant query, or None when it returns nothing (on the targets' shared
    session)."""
    headers = {}
    token = target.bearer_token.resolve() if target.bearer_token is not None else None
    if token is not None:
        headers["Authorization"] = f"Bearer {token.reveal()}"
    async with asyncio.timeout(timeout), session.get(target.url.rstrip("/") + "/api/v1/query", params={"query": query},
                                                     headers=headers) as resp:
        resp.raise_for_status()
        data = (await resp.json())["data"]
    result = data["result"]
    if data["resultType"] == "scalar":
        return float(result[1])
    if data["resultType"] == "vector" and result:
        return float(result[0]["value"][1])
    return None
