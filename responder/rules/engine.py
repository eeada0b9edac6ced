"""Which rules an alert matches, and the rendered, validated steps they would run."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError

from responder.models import Alert
from responder.params import render_as
from responder.plugins import Registry
from responder.rules.matchers import Matcher
from responder.rules.model import MitigationSpec, Rule, StepSpec
from responder.rules.templating import TemplateError, alert_context, render_value
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


def render_steps(rule: Rule, alert: Alert) -> tuple[list[RenderedStep], list[RenderedStep], list[StepError]]:
    """Render a rule's collectors and mitigations for one alert. Steps that fail to render are
    returned as errors (recorded on the incident); the others still run."""
    context = alert_context(
        alert.labels,
        alert.annotations,
        {"name": alert.name, "source": alert.source, "status": alert.status.value, "fingerprint": alert.fingerprint},
    )
    errors: list[StepError] = []

    def render_all(steps: list[StepSpec] | list[MitigationSpec], registry: Registry[type[StepType]]
                   ) -> list[RenderedStep]:
        rendered = []
        for index, spec in enumerate(steps):
            step_id = spec.step_id(index)
            try:
                model: type[BaseModel] = registry.get(spec.type).params_model
                # Each value is written in the way its parameter's type demands (see params.RenderAs).
                params = {key: render_value(value, context, kind.escape if (kind := render_as(model, key)) else None)
                          for key, value in spec.params.items()}
                rendered.append(RenderedStep(step_id, spec.type, spec, model.model_validate(params), spec.timeout))
            except TemplateError as exc:
                errors.append(StepError(step_id, str(exc)))
            except ValidationError as exc:
                detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                errors.append(StepError(step_id, f"rendered parameters are invalid: {detail}"))
        return rendered

    collectors = render_all(rule.collectors, collector_types)
    mitigations = render_all(rule.mitigations, action_types)
    return collectors, mitigations, errors
