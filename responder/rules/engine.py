"""Which rules an alert matches, and the rendered, validated steps they would run for an incident."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from responder.models import Alert
from responder.params import render_as
from responder.plugins import Registry
from responder.rules.matchers import Matcher
from responder.rules.model import MitigationSpec, Rule, StepSpec
from responder.rules.templating import Members, TemplateError, alert_context, render_value
from responder.steps import RenderedStep, StepType, action_types, collector_types


class StepError(ValueError):
    """A step that cannot run for this alert: a missing label, or a rendered value of the wrong shape."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step


@dataclass(frozen=True, slots=True)
class RuleVerdict:
    rule: Rule
    matched: bool
    failed: list[Matcher] = field(default_factory=list)
    wrong_source: bool = False


class RuleSet:
    def __init__(self, rules: list[Rule], default_rule: str | None = None) -> None:
        self.rules = rules
        self.default = next((r for r in rules if r.name == default_rule), None) if default_rule else None
        if default_rule and self.default is None:
            raise ValueError(f"default_rule {default_rule!r} is not a loaded rule")

    def by_names(self, names: str | None) -> list[Rule]:
        """The rules an incident names (incidents of the previous release may name several, comma-separated)."""
        wanted = [n for n in (names or "").split(",") if n]
        return [r for n in wanted for r in self.rules if r.name == n]

    def match(self, alert: Alert) -> list[Rule]:
        """Rules in order; the first match wins unless it says `continue: true`."""
        matched: list[Rule] = []
        for rule in self.rules:
            if rule is self.default or not rule.matches(alert.source, alert.labels):
                continue
            matched.append(rule)
            if not rule.continue_:
                break
        if not matched and self.default is not None:
            matched.append(self.default)
        return matched

    def explain(self, alert: Alert) -> list[RuleVerdict]:
        """Every rule up to (and past, with `continue`) the deciding one, with why it did or did not match."""
        verdicts = []
        for rule in self.rules:
            if rule is self.default:
                continue
            wrong_source = bool(rule.sources) and alert.source not in rule.sources
            failed = [m for m in rule.matchers if not m.matches(alert.labels)]
            matched = not failed and not wrong_source
            verdicts.append(RuleVerdict(rule, matched, failed, wrong_source))
            if matched and not rule.continue_:
                break
        return verdicts


def _context(alert: Alert) -> dict[str, Any]:
    return alert_context(
        alert.labels,
        alert.annotations,
        {"name": alert.name, "source": alert.source, "status": alert.status.value, "fingerprint": alert.fingerprint,
         "group_key": alert.group_key},
    )


def render_steps(rule: Rule, alert: Alert, members: Sequence[Alert] = ()
                 ) -> tuple[list[RenderedStep], list[RenderedStep], list[StepError]]:
    """Render a rule's collectors and mitigations for an incident: `alert` stands for the group (its
    common labels), `members` are its firing alerts, for `for_each: alerts` steps and the `alerts.*`
    lists of every step. Steps that fail to render are returned as errors (recorded on the incident);
    the others still run."""
    errors: list[StepError] = []

    def render_one(spec: StepSpec, step_id: str, model: type[BaseModel], context: dict[str, Any]
                   ) -> BaseModel | None:
        group = Members(members, _context, spec.max_members)
        try:
            # Each value is written in the way its parameter's type demands (see params.RenderAs).
            params = {key: render_value(value, context, kind.escape if (kind := render_as(model, key)) else None,
                                        group)
                      for key, value in spec.params.items()}
            return model.model_validate(params)
        except TemplateError as exc:
            errors.append(StepError(step_id, str(exc)))
        except ValidationError as exc:
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            errors.append(StepError(step_id, f"rendered parameters are invalid: {detail}"))
        return None

    def render_all(steps: list[StepSpec] | list[MitigationSpec], registry: Registry[type[StepType]]
                   ) -> list[RenderedStep]:
        rendered = []
        for index, spec in enumerate(steps):
            step_id = spec.step_id(index)
            model: type[BaseModel] = registry.get(spec.type).params_model
            if spec.for_each is None:
                params = render_one(spec, step_id, model, _context(alert))
                if params is not None:
                    rendered.append(RenderedStep(step_id, spec.type, spec, params, spec.timeout))
                continue
            # One call per distinct rendering: fifty pods of one deployment ask about the deployment once.
            seen: set[str] = set()
            for member in members[:spec.max_members]:
                params = render_one(spec, step_id, model, _context(member))
                if params is None:
                    continue
                rendered_json = params.model_dump_json()
                if rendered_json in seen:
                    continue
                seen.add(rendered_json)
                digest = hashlib.sha256(rendered_json.encode()).hexdigest()[:8]
                rendered.append(RenderedStep(f"{step_id}@{digest}", spec.type, spec, params, spec.timeout))
        return rendered

    collectors = render_all(rule.collectors, collector_types)
    mitigations = render_all(rule.mitigations, action_types)
    # Members missing the same label fail the same way: say it once.
    unique = list({str(e): e for e in errors}.values())
    return collectors, mitigations, unique
