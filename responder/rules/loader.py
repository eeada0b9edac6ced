"""Load rule files from the configured directories and validate everything a rule refers to.

Problems are collected, not raised one at a time, so `responder check` can show them all, each with
file, rule and key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from responder.params import render_as
from responder.plugins import Registry, UnknownPlugin
from responder.problems import Problem, dotted, validation_messages
from responder.rules.matchers import MatcherError
from responder.rules.model import Rule, StepSpec
from responder.rules.templating import check_typed, check_value, is_templated
from responder.steps import StepType, action_types, collector_types
from responder.yamlsource import Located, YamlDocument, YamlError, parse_yaml

# Rule problems are ordinary problems whose `rule` is set.
RuleProblem = Problem


def rule_files(dirs: list[Path]) -> list[Path]:
    """Files in a defined order: directories as configured, files by name inside each."""
    files: list[Path] = []
    for directory in dirs:
        if directory.is_file():
            files.append(directory)
        else:
            files += sorted(p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
                            and not p.name.endswith((".test.yaml", ".test.yml")))
    return files


def load_rules(dirs: list[Path]) -> tuple[list[Rule], list[RuleProblem]]:
    rules: list[Rule] = []
    problems: list[RuleProblem] = []
    seen: dict[str, Path] = {}
    for directory in dirs:
        if not directory.exists():
            problems.append(Problem(str(directory), None, "", "rule directory does not exist"))
    for path in rule_files([d for d in dirs if d.exists()]):
        for rule, rule_problems in _load_file(path):
            problems += rule_problems
            if rule is None:
                continue
            if rule.name in seen:
                message = f"duplicate rule name (also in {seen[rule.name]})"
                problems.append(Problem(str(path), rule.name, "name", message))
                continue
            seen[rule.name] = path
            if not rule_problems:
                rules.append(rule)
    return rules, problems


def _load_file(path: Path) -> list[tuple[Rule | None, list[Problem]]]:
    origin = str(path)
    try:
        document = parse_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return [(None, [Problem(origin, None, "", f"cannot read rules: {exc.strerror}")])]
    except YamlError as exc:
        return [(None, [Problem(origin, None, "", f"not valid YAML: {exc.message}", exc.line)])]
    if document.data is None:
        return []
    if not isinstance(document.data, dict) or not isinstance(document.data.get("rules"), list):
        return [(None, [Problem(origin, None, "rules", "a rule file is a mapping with a 'rules:' list", 1)])]
    return [_load_rule(origin, document, index, raw) for index, raw in enumerate(document.data["rules"])]


def _load_rule(origin: str, document: YamlDocument, index: int, raw: Any) -> tuple[Rule | None, list[Problem]]:
    name = raw.get("name") if isinstance(raw, dict) else None
    label = str(name) if name else f"#{index}"

    located = Located(origin, document, ("rules", index))

    def problem(key: str, message: str) -> Problem:
        return Problem(origin, label, key, message, located.line(key))

    try:
        rule = Rule.model_validate(raw)
    except MatcherError as exc:
        return None, [problem("match", str(exc))]
    except ValidationError as exc:
        return None, [problem(dotted(loc), message) for loc, message in validation_messages(exc, Rule)]
    rule.read_from(located)
    problems = []
    for section, steps, registry in (("collectors", rule.collectors, collector_types),
                                     ("mitigations", rule.mitigations, action_types)):
        for i, step in enumerate(steps):
            for key, message in validate_step(step, registry):
                problems.append(problem(f"{section}.{i}.{key}", message))
    return rule, problems


def validate_step(step: StepSpec, registry: Registry[type[StepType]]) -> list[tuple[str, str]]:
    """Check a step's type and parameters now; templated values are checked when rendered."""
    try:
        plugin = registry.get(step.type)
    except UnknownPlugin as exc:
        return [("type", str(exc))]
    problems = check_value(step.params)
    model: type[BaseModel] = plugin.params_model
    try:
        model.model_validate(step.params)
    except ValidationError as exc:
        for loc, message in validation_messages(exc, model):
            top = loc[0] if loc else None
            if isinstance(top, str) and _templated(step.params.get(top)):
                continue
            problems.append((f"params.{dotted(loc)}", message))
    for key, value in step.params.items():
        kind = render_as(model, key)
        if kind is not None and isinstance(value, str) and is_templated(value):
            problems += [(f"params.{key}", message) for message in check_typed(value, kind)]
    for name, info in model.model_fields.items():
        value = step.params.get(name)
        # A field marked `fixed` (an executable, a command's flags) must be written in the rule itself.
        if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("fixed") and _templated(value):
            problems.append((f"params.{name}", "must be written literally in the rule, not rendered from the alert"))
    return problems


def _templated(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_templated(v) for v in value.values())
    if isinstance(value, list):
        return any(_templated(v) for v in value)
    return is_templated(value)
