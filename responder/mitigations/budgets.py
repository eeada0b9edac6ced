"""The guard's policy on earlier decisions: a duplicate decision for an incident's step, the cooldown of
an action on its target, and the daily and hourly budgets, each with the reason a person reads.

`policy(...)` runs inside the reservation's transaction (ActionStore.reserve), so the check and the
decision it allows are one atomic step across replicas. Dry-runs count only earlier dry-runs, so a
dry-run rule shows what enforcing it would do without being held back by, or holding back, real actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from responder.store.actions import AuditQueries, Policy

# Rows that mean "this target was (or is about to be) changed, or a person was asked": they hold the
# cooldown. Budgets count the same rows minus the ones a person refused or nobody answered.
COOLDOWN_OUTCOMES = ("executing", "executed", "failed", "pending", "approved", "denied", "expired")
BUDGET_OUTCOMES = ("executing", "executed", "failed", "pending", "approved")
DAY, HOUR = 86400.0, 3600.0


@dataclass(frozen=True, slots=True)
class Limits:
    cooldown: float
    max_per_day: int
    max_per_hour: int


def policy(incident_id: int | None, rule: str, row: dict[str, Any], limits: Limits) -> Policy:
    """The refusal, if any, for decision `row` (step, action, target, mode) of `rule` on an incident."""
    dry = row["mode"] == "dry-run"
    counted = ("dry-run",) if dry else COOLDOWN_OUTCOMES
    budgeted = ("dry-run",) if dry else BUDGET_OUTCOMES
    action, target = row["action"], row["target"]

    async def decide(audit: AuditQueries, now: float) -> tuple[str | None, str]:
        earlier = await audit.earlier_decision(incident_id, rule, row["step"], counted)
        if earlier is not None:
            return "duplicate", f"this incident's step was already decided (action {earlier})"
        last = await audit.last_on_target(action, target, counted)
        if last is not None and now - float(last["created_at"]) < limits.cooldown:
            ago = now - float(last["created_at"])
            return "cooldown", (f"{action} on {target} ran {ago:.0f}s ago (action {last['id']});"
                                f" cooldown {limits.cooldown:g}s, {limits.cooldown - ago:.0f}s left")
        today = await audit.count_on_target(action, target, now - DAY, budgeted)
        if today >= limits.max_per_day:
            return "budget", f"{action} on {target} already ran {today} time(s) in 24h (max {limits.max_per_day})"
        hour = await audit.count_all(now - HOUR, budgeted)
        if hour >= limits.max_per_hour:
            return "global-budget", f"{hour} action(s) in the last hour across all targets (max {limits.max_per_hour})"
        return None, ""

    return decide
