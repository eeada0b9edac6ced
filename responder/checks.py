"""What neither the config nor a rule file can know alone, checked together for `responder check`:
rules naming targets the config lacks, secrets whose variable is unset, `when:` conditions naming a
step that does not exist, and targets nothing uses.

Each finding is a `Problem` with the file, line, rule and key to fix.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from responder.collectors import registry as collector_registry
from responder.config import Config, ConfigError, TargetsConfig, iter_secret_refs, load_config
from responder.intake import registry as intake_registry
from responder.mitigations import registry as action_registry
from responder.plugins import Registry, UnknownPlugin
from responder.problems import Problem
from responder.rules.conditions import parse_condition
from responder.rules.engine import RuleSet
from responder.rules.loader import load_rules
from responder.rules.model import Rule, StepSpec
from responder.rules.templating import is_templated
from responder.steps import RenderedStep

# Secrets without which the daemon still runs, less: an unset one is worth a warning, not an error.
OPTIONAL_SECRETS = ("sinks.slack.token", "server.api_token", "intakes.", "mitigations.approvals.")


def cross_check(config: Config, rules: list[Rule], *, targets_known: bool = True,
                origin: str | None = None) -> list[Problem]:
    """Problems between the config and the rules. `targets_known=False` (the targets section itself is
    broken) skips the target checks rather than report every target as missing. `origin` names the
    config file in problems (default: its resolved path)."""
    origin = origin or str(config.source or "(defaults)")
    problems = unset_secrets(config, origin)
    used: set[tuple[str, str]] = set()
    for rule in rules:
        problems += _missing_targets(config.targets, rule, used, targets_known)
        problems += _when_steps(rule)
        if rule.alertmanager is not None and targets_known and rule.alertmanager not in config.targets.alertmanager:
            problems.append(_rule_problem(rule, "alertmanager", f"no alertmanager target named {rule.alertmanager!r}"))
    # An Alertmanager target is also chosen at run time, by the externalURL of a delivery: never "unused".
    used |= {("alertmanager", name) for name in config.targets.alertmanager}
    # Only where Slack's buttons are on at all (their requests are verified with the signing secret).
    buttons = config.mitigations.approvals.slack_signing_secret is not None
    if buttons and config.sinks.slack.permissions.approve is None and any(
            m.requires_approval for r in rules for m in r.mitigations):
        problems.append(Problem(origin, None, "sinks.slack.permissions.approve",
                                "rules ask for approvals but nobody may approve from Slack until this lists users"
                                " or user groups", config.line("sinks.slack.permissions"), "warning"))
    if config.mitigations.redis is not None and config.mitigations.redis.target is not None:
        used.add(("redis", config.mitigations.redis.target))
    if targets_known:
        problems += _unused_targets(config, used, origin)
    return problems


def unset_secrets(config: Config, origin: str) -> list[Problem]:
    problems = []
    for key, ref in iter_secret_refs(config):
        if ref.env is None or ref.resolve() is not None:
            continue
        optional = key.startswith(OPTIONAL_SECRETS)
        message = f"variable {ref.env} is unset or empty" + (
            " (this feature stays off until it is set)" if optional else ": this target cannot be reached")
        problems.append(Problem(origin, None, key, message, config.line(key), "warning" if optional else "error"))
    return problems


def target_kind(step_type: str) -> str | None:
    """The `targets.<kind>` a step reads or changes: its family prefix (`kubernetes.pods` -> kubernetes)."""
    kind = step_type.partition(".")[0]
    return kind if kind in TargetsConfig.model_fields else None


def step_target(step: StepSpec, registry: Registry[Any]) -> tuple[str, str] | None:
    """(kind, name) of the configured target a step uses; None when it uses none, or it is templated."""
    kind = target_kind(step.type)
    try:
        fields = registry.get(step.type).params_model.model_fields
    except UnknownPlugin:
        return None
    if kind is None or "target" not in fields:
        return None
    name = step.params.get("target", fields["target"].default)
    if not isinstance(name, str) or is_templated(name):
        return None
    return kind, name


def rendered_target(config: Config, step: RenderedStep) -> tuple[str, str, bool] | None:
    """(kind, name, configured?) of the target a rendered step will use; None when it uses none."""
    kind = target_kind(step.type)
    name = getattr(step.params, "target", None)
    if kind is None or not isinstance(name, str):
        return None
    return kind, name, name in getattr(config.targets, kind)


def _steps(rule: Rule) -> Iterator[tuple[str, StepSpec, Registry[Any]]]:
    for i, collector in enumerate(rule.collectors):
        yield f"collectors.{i}", collector, collector_registry
    for i, mitigation in enumerate(rule.mitigations):
        yield f"mitigations.{i}", mitigation, action_registry


def _missing_targets(targets: TargetsConfig, rule: Rule, used: set[tuple[str, str]],
                     targets_known: bool) -> list[Problem]:
    """One problem per target a rule names that the config lacks, at the first step using it."""
    missing: dict[tuple[str, str], list[tuple[str, StepSpec]]] = {}
    for key, step, registry in _steps(rule):
        found = step_target(step, registry)
        if found is None:
            continue
        used.add(found)
        if targets_known and found[1] not in getattr(targets, found[0]):
            missing.setdefault(found, []).append((key, step))
    problems = []
    for (kind, name), steps in missing.items():
        key, first = steps[0]
        known = ", ".join(sorted(getattr(targets, kind))) or "none"
        names = ", ".join(f"{k} ({s.id or s.type})" for k, s in steps)
        problems.append(_rule_problem(
            rule, f"{key}.params.target" if "target" in first.params else f"{key}.type",
            f"no {kind} target named {name!r} in the config (targets.{kind}: {known}), so "
            f"{'this step' if len(steps) == 1 else f'{len(steps)} steps'} cannot run: {names}"))
    for i, mitigation in enumerate(rule.mitigations):
        check = mitigation.verify.prometheus if mitigation.verify is not None else None
        if check is None:
            continue
        used.add(("prometheus", check.target))
        if targets_known and check.target not in targets.prometheus:
            known = ", ".join(sorted(targets.prometheus)) or "none"
            problems.append(_rule_problem(
                rule, f"mitigations.{i}.verify.prometheus.target",
                f"no prometheus target named {check.target!r} in the config (targets.prometheus: {known}), so"
                " this step's verification cannot run"))
    return problems


def _when_steps(rule: Rule) -> list[Problem]:
    """Every `evidence.STEP...` in a mitigation's conditions must name a collector step of the rule."""
    step_ids = [c.step_id(i) for i, c in enumerate(rule.collectors)]
    problems = []
    for i, mitigation in enumerate(rule.mitigations):
        checks = [(f"mitigations.{i}.when.{j}", text) for j, text in enumerate(mitigation.when)]
        if mitigation.verify is not None:
            if mitigation.verify.collector is not None and mitigation.verify.collector not in step_ids:
                problems.append(_rule_problem(rule, f"mitigations.{i}.verify.collector",
                                              f"no collector step {mitigation.verify.collector!r} in this rule "
                                              f"(steps: {', '.join(step_ids) or 'none'})"))
            checks += [(f"mitigations.{i}.verify.when.{j}", text) for j, text in enumerate(mitigation.verify.when)]
        for key, text in checks:
            comparison = parse_condition(text)
            for operand in (comparison.left, comparison.right):
                reference = operand.reference or ""
                if reference.startswith("evidence.") and not any(
                        reference.startswith(f"evidence.{s}.") for s in step_ids):
                    problems.append(_rule_problem(
                        rule, key, f"{reference!r} names no collector step of this rule, so the condition is "
                                   f"never true (steps: {', '.join(step_ids) or 'none'}; give a step an `id:`)"))
    return problems


def _unused_targets(config: Config, used: set[tuple[str, str]], origin: str) -> list[Problem]:
    problems = []
    for kind in TargetsConfig.model_fields:
        for name in getattr(config.targets, kind):
            if (kind, name) not in used:
                key = f"targets.{kind}.{name}"
                problems.append(Problem(origin, None, key, "no rule uses this target", config.line(key), "warning"))
    return problems


def _rule_problem(rule: Rule, key: str, message: str, severity: Any = "error") -> Problem:
    where = rule.located
    return Problem(where.file if where else "(rules)", rule.name, key, message,
                   where.line(key) if where else None, severity)


@dataclass(frozen=True, slots=True)
class CheckReport:
    origin: str
    rule_dirs: list[str]
    rule_count: int
    problems: list[Problem]


def check_all(path: Path | None, overrides: dict[str, Any] | None = None) -> CheckReport:
    """Everything `responder check` reports, in one pass: a broken config section does not stop the
    rules from being checked, nor a broken rule the others."""
    origin = str(path) if path else "(defaults)"
    problems: list[Problem] = []
    broken: frozenset[str] = frozenset()
    try:
        config = load_config(path, overrides)
    except ConfigError as exc:
        problems += exc.problems
        if exc.partial is None:  # unreadable: nothing more to check
            return CheckReport(origin, [], 0, problems)
        config, broken = exc.partial, exc.broken
    for module in config.plugins:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            problems.append(Problem(origin, None, "plugins", f"cannot import {module!r}: {exc}",
                                    config.line("plugins")))
    rules, rule_problems = load_rules(config.rule_dirs())
    problems += rule_problems
    try:
        RuleSet(rules, config.rules.default_rule)
    except ValueError as exc:
        problems.append(Problem(origin, None, "rules.default_rule", str(exc), config.line("rules.default_rule")))
    for name, intake_config in config.intakes.items():
        key = f"intakes.{name}"
        try:
            intake = intake_registry.get(name)(intake_config)
        except (UnknownPlugin, ValueError) as exc:
            problems.append(Problem(origin, None, key, str(exc), config.line(key)))
            continue
        problems += [Problem(origin, None, f"{key}.auth", warning, config.line(f"{key}.auth"), "warning")
                     for warning in intake.auth_warnings()]
    problems += cross_check(config, rules, targets_known="targets" not in broken, origin=origin)
    return CheckReport(origin, [str(d) for d in config.rule_dirs()], len(rules), problems)
