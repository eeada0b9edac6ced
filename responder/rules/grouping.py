"""Which incident an alert belongs to: the rules it matches and, per rule, its group key.

This runs per alert before the intake transaction, so it is kept to label lookups: rule matching and
a few string joins, no I/O.
"""

from __future__ import annotations

from responder.models import Alert, Placement, source_group_key
from responder.rules.engine import RuleSet
from responder.rules.model import Rule

EVERY_LABEL = "..."


def group_key(rule: Rule | None, alert: Alert) -> str:
    """The rule's `group_by` values for this alert; ['...'] is the alert itself; none given is the
    sender's own group."""
    if rule is None or rule.group_by is None:
        return source_group_key(alert)
    if rule.group_by == [EVERY_LABEL]:
        return alert.fingerprint
    return ",".join(f"{name}={alert.labels.get(name, '')}" for name in rule.group_by)


class RuleGrouping:
    """One placement per rule the alert matches (two rules: two incidents); none matched: the
    sender's group, without a rule."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset

    def place(self, alert: Alert) -> list[Placement]:
        rules = self.ruleset.match(alert)
        if not rules:
            return [Placement(None, group_key(None, alert))]
        return [Placement(rule.name, group_key(rule, alert), rule.group_wait) for rule in rules]
