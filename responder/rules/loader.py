"""Load rule files from the configured directories and validate everything a rule refers to.

Problems are collected, not raised one at a time, so `responder check` can show them all, each with
file, rule and key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from responder.collectors import registry as collector_registry
from responder.mitigations import registry as action_registry
from responder.params import render_as
from responder.plugins import Registry, UnknownPlugin
from responder.rules.matchers import MatcherError
from responder.rules.model import Rule, StepSpec
from responder.rules.templating import check_typed, check_value, is_templated


@dataclass(frozen=True, slots=True)
class RuleProblem:
    file: Path
    rule: str | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}"
        if self.rule:
            where += f": rule {self.rule!r}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


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
            problems.append(RuleProblem(directory, None, "", "rule directory does not exist"))
    for path in rule_files([d for d in dirs if d.exists()]):
        for rule, rule_problems in _load_file(path):
            problems += rule_problems
            if rule is None:
                continue
            if rule.name in seen:
                message = f"duplicate rule name (also in {seen[rule.name]})"
                problems.append(RuleProblem(path, rule.name, "name", message))
                continue
            seen[rule.name] = path
            if not rule_problems:
                rules.append(rule)
    return rules, problems


def _load_file(path: Path) -> list[tuple[Rule | None, list[RuleProblem]]]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        return [(None, [RuleProblem(path, None, "", f"cannot read rules: {exc}")])]
    if document is None:
        return []
    if not isinstance(document, dict) or not isinstance(document.get("rules"), list):
        return [(None, [RuleProblem(path, None, "rules", "a rule file is a mapping with a 'rules:' list")])]
    return [_load_rule(path, index, raw) for index, raw in enumerate(document["rules"])]


def _load_rule(path: Path, index: int, raw: Any) -> tuple[Rule | None, list[RuleProblem]]:
    name = raw.get("name") if isinstance(raw, dict) else None
    label = str(name) if name else f"#{index}"
    try:
        rule = Rule.model_validate(raw)
    except MatcherError as exc:
        return None, [RuleProblem(path, label, "match", str(exc))]
    except ValidationError as exc:
        return None, [RuleProblem(path, label, _loc(err["loc"]), _msg(err)) for err in exc.errors()]
    problems = []
    for section, steps, registry in (("collectors", rule.collectors, collector_registry),
                                     ("mitigations", rule.mitigations, action_registry)):
        for i, step in enumerate(steps):
            for key, message in validate_step(step, registry):
                problems.append(RuleProblem(path, rule.name, f"{section}.{i}.{key}", message))
    return rule, problems


def validate_step(step: StepSpec, registry: Registry[Any]) -> list[tuple[str, str]]:
    """Check a step's type and parameters now; templated values are checked when rendered."""
    try:
        plugin = registry.get(step.type)
    except UnknownPlugin as exc:
        return [("type", str(exc))]
    problems = [("params", msg) for msg in check_value(step.params)]
    model: type[BaseModel] = plugin.params_model
    try:
        model.model_validate(step.params)
    except ValidationError as exc:
        for err in exc.errors():
            top = err["loc"][0] if err["loc"] else None
            if isinstance(top, str) and _templated(step.params.get(top)):
                continue
            problems.append((f"params.{_loc(err['loc'])}", _msg(err)))
    for key, value in step.params.items():
        kind = render_as(model, key)
        if kind is not None and isinstance(value, str) and is_templated(value):
            problems += [(f"params.{key}", message) for message in check_typed(value, kind)]
    for name, info in model.model_fields.items():
        # A field marked `fixed` (an executable, a command's flags) must be written in the rule itself.
        if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("fixed") \
                and _templated(step.params.get(name)):
            problems.append((f"params.{name}", "must be written literally in the rule, not rendered from the alert"))
    return problems


def _templated(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_templated(v) for v in value.values())
    if isinstance(value, list):
        return any(_templated(v) for v in value)
    return is_templated(value)


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _msg(err: Any) -> str:
    return str(err["msg"]).removeprefix("Value error, ")
