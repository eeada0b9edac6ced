"""Rules as typed models: what to match, what to collect, what to try, where to post."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from responder.config import Duration
from responder.rules.conditions import ConditionText
from responder.rules.matchers import Matcher, parse_matchers
from responder.yamlsource import Located


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class StepSpec(_Strict):
    """One collector or mitigation of a rule, before its templates are rendered."""

    type: str
    id: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    timeout: Duration | None = None
    # Render once per firing member of the incident (its labels as `labels`), not once for the group;
    # at most `max_members` members, and identical rendered calls are made once. `max_members` also caps
    # the distinct values of an `alerts.*` list, so a query over a group's pods stays bounded.
    for_each: Literal["alerts"] | None = None
    max_members: int = Field(default=20, ge=1, le=500)

    def step_id(self, index: int) -> str:
        return self.id or f"{self.type}#{index}"


class PrometheusCheck(_Strict):
    target: str
    query: str
    # Recovered when the query's first value is below / above this (give one).
    below: float | None = None
    above: float | None = None

    @model_validator(mode="after")
    def _one_threshold(self) -> PrometheusCheck:
        if (self.below is None) == (self.above is None):
            raise ValueError("give exactly one of 'below' or 'above'")
        return self


class VerifySpec(_Strict):
    """How to tell, a while after an action, whether it helped."""

    after: Duration = 120.0
    # Either re-run a collector step of the same rule and test `when` on its evidence ...
    collector: str | None = None
    when: list[ConditionText] = Field(default_factory=list)
    # ... or ask Prometheus.
    prometheus: PrometheusCheck | None = None

    @model_validator(mode="after")
    def _one_check(self) -> VerifySpec:
        if (self.collector is None) == (self.prometheus is None):
            raise ValueError("give exactly one of 'collector' (with 'when') or 'prometheus'")
        if self.collector is not None and not self.when:
            raise ValueError("a collector check needs 'when' conditions saying what recovered means")
        return self


class MitigationSpec(StepSpec):
    mode: Literal["dry-run", "enforce"] | None = None
    requires_approval: bool = False
    # Every condition must hold, or the step is skipped with the failing condition as the reason.
    when: list[ConditionText] = Field(default_factory=list)
    # Override mitigations.cooldown / max_per_day for this step's action and target.
    cooldown: Duration | None = None
    max_per_day: int | None = Field(default=None, ge=0)
    verify: VerifySpec | None = None


class SlackRoute(_Strict):
    channel: str | None = None
    # The Slack user group (S0123ABCD) told when a mitigation of this rule did not help.
    escalation: str | None = Field(default=None, pattern=r"^S[A-Z0-9]{2,}$")


class RefreshSpec(_Strict):
    """Gather evidence again when members join an incident already processed, at most this often."""

    on: Literal["new_members"] = "new_members"
    min_interval: Duration = 300.0

    @model_validator(mode="before")
    @classmethod
    def _bare_on(cls, data: Any) -> Any:
        # YAML 1.1 reads a bare `on:` key as the boolean true.
        if isinstance(data, dict) and True in data:
            return {"on" if key is True else key: value for key, value in data.items()}
        return data


class Rule(_Strict):
    name: str
    description: str = ""
    match: list[str] | str
    sources: list[str] = Field(default_factory=list)
    continue_: bool = Field(default=False, alias="continue")
    collectors: list[StepSpec] = Field(default_factory=list)
    mitigations: list[MitigationSpec] = Field(default_factory=list)
    # Steps the runbook keeps for people; posted as a checklist in the incident thread.
    checklist: list[str] = Field(default_factory=list)
    slack: SlackRoute = SlackRoute()
    mode: Literal["dry-run", "enforce"] | None = None
    # The `targets.alertmanager` entry that sends this rule's alerts (silences from Slack go there); by
    # default the intake's, or the one whose URL is the delivery's externalURL.
    alertmanager: str | None = None
    # Label names whose values make an alert's group (its incident); ['...'] is every label, i.e. one
    # incident per alert. None: the sender's own grouping (Alertmanager's groupKey, the PagerDuty incident).
    group_by: list[str] | None = None
    # How long a new incident collects members before its evidence is gathered.
    group_wait: Duration = 0.0
    refresh: RefreshSpec | None = None

    _matchers: list[Matcher] = PrivateAttr(default_factory=list)
    # The file and place the rule was read from (None: built in code), for problems found later.
    _located: Located | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name_is_slug(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", value):
            raise ValueError("rule names are letters, digits, '.', '_' and '-' (at most 128)")
        return value

    @field_validator("group_by")
    @classmethod
    def _group_by_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if "..." in value and len(value) > 1:
            raise ValueError("'...' (every label) stands alone")
        for name in value:
            if name != "..." and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not a label name")
        return value

    @field_validator("match")
    @classmethod
    def _matchers_parse(cls, value: list[str] | str) -> list[str] | str:
        parse_matchers(value)  # raises MatcherError (a ValueError) naming the bad matcher
        return value

    def model_post_init(self, __context: Any) -> None:
        self._matchers = parse_matchers(self.match)

    @property
    def matchers(self) -> list[Matcher]:
        return self._matchers

    @property
    def located(self) -> Located | None:
        return self._located

    def read_from(self, located: Located) -> None:
        self._located = located

    def matches(self, source: str, labels: dict[str, str]) -> bool:
        return (not self.sources or source in self.sources) and all(m.matches(labels) for m in self._matchers)
