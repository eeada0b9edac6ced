"""Every configuration and rule the documentation shows goes through `responder check`: the YAML blocks of
README.md and docs/*.md, docs/production.yaml, config.example.yaml, and the chart's values files (their
`config:` and their rule files).

A block that is deliberately a fragment says so on the line before it: `<!-- check: partial -->`. An
Alertmanager configuration goes through `amtool check-config`, a rule-test file through the test-file loader;
any other block fails the test until it is marked.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from responder.checks import check_all, step_target
from responder.config import Config, iter_secret_refs, load_config
from responder.problems import Problem
from responder.rule_tests import load_test_file
from responder.rules.model import Rule
from responder.steps import action_types, collector_types
from tests.support.processes import REPO

PARTIAL = "<!-- check: partial -->"
CONFIG_KEYS = set(Config.model_fields)
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```ya?ml\n(?P<body>.*?)```", re.S)


def markdown_blocks() -> Iterator[tuple[str, str]]:
    for path in DOCS:
        text = path.read_text()
        for m in BLOCK.finditer(text):
            if PARTIAL not in m.group("before"):
                line = text[: m.start("body")].count("\n") + 1
                yield f"{path.relative_to(REPO)}:{line}", m.group("body")


def kind_of(document: Any) -> str:
    if not isinstance(document, dict) or not document:
        return "unknown"
    if set(document) == {"rules"} and isinstance(document["rules"], list):
        return "rules"
    if set(document) <= CONFIG_KEYS:
        return "config"
    if set(document) <= {"route", "receivers", "inhibit_rules", "global", "templates"}:
        return "alertmanager"
    if "tests" in document and set(document) <= {"rule_files", "tests"}:
        return "rule-tests"
    return "unknown"


def chart_values() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in (REPO / "helm" / "alert-responder" / "values.yaml", REPO / "docs" / "examples" /
                 "values-production.yaml"):
        yield str(path.relative_to(REPO)), yaml.safe_load(path.read_text())


def examples() -> Iterator[Any]:
    for where, body in markdown_blocks():
        yield pytest.param(kind_of(yaml.safe_load(body)), body, id=where)
    for where, values in chart_values():
        yield pytest.param("config", yaml.safe_dump(values["config"]), id=f"{where}:config")
        for name, text in values["rules"]["files"].items():
            yield pytest.param("rules", text, id=f"{where}:rules.files.{name}")


def errors(problems: list[Problem]) -> list[str]:
    return [str(p) for p in problems if p.severity == "error"]


def dummy_secrets(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """A value for every {env: NAME} the config names, as its deployment would give it."""
    for _, ref in iter_secret_refs(config):
        if ref.env:
            monkeypatch.setenv(ref.env, f"dummy-{ref.env.lower()}")


def targets_for(rules_dir: Path) -> dict[str, dict[str, Any]]:
    """A target of the right kind for every target the rules name: a rule snippet is checked on its own."""
    stub = {"kubernetes": {"in_cluster": True}, "postgres": {"dsn": "postgresql://u@db/app"},
            "redis": {"url": "redis://cache:6379/0"}, "prometheus": {"url": "http://prometheus:9090"},
            "http": {"url": "http://app:8000"}}
    targets: dict[str, dict[str, Any]] = {}
    for path in rules_dir.glob("*.yaml"):
        for raw in yaml.safe_load(path.read_text())["rules"]:
            rule = Rule.model_validate(raw)
            for step, registry in [*((c, collector_types) for c in rule.collectors),
                                   *((m, action_types) for m in rule.mitigations)]:
                if (found := step_target(step, registry)) is not None:
                    targets.setdefault(found[0], {})[found[1]] = stub[found[0]]
            for mitigation in rule.mitigations:
                if mitigation.verify is not None and mitigation.verify.prometheus is not None:
                    targets.setdefault("prometheus", {})[mitigation.verify.prometheus.target] = stub["prometheus"]
    return targets


@pytest.mark.parametrize(("kind", "body"), list(examples()))
def test_documented_example_passes_check(kind: str, body: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert kind != "unknown", f"neither a config, rules, an Alertmanager config nor rule tests: mark it {PARTIAL!r}"
    if kind == "alertmanager":
        (tmp_path / "alertmanager.yml").write_text(body)
        result = subprocess.run(["amtool", "check-config", str(tmp_path / "alertmanager.yml")], capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        return
    if kind == "rule-tests":
        (tmp_path / "case.test.yaml").write_text(body)
        assert load_test_file(tmp_path / "case.test.yaml").tests
        return
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    config_path = tmp_path / "config.yaml"
    if kind == "rules":
        (rules_dir / "example.yaml").write_text(body)
        config_path.write_text(yaml.safe_dump({"targets": targets_for(rules_dir)}))
    else:
        # A config shown on its own is checked against no rules: its targets are its own business.
        config_path.write_text(body)
        dummy_secrets(load_config(config_path, {"rules.dirs": [str(rules_dir)]}), monkeypatch)
    report = check_all(config_path, {"rules.dirs": [str(rules_dir)]})
    assert not errors(report.problems), "\n".join(errors(report.problems))


@pytest.mark.parametrize("path", ["config.example.yaml", "docs/production.yaml", "deploy/container-config.yaml"])
def test_shipped_configs_pass_check_with_the_shipped_rules(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    dummy_secrets(load_config(REPO / path), monkeypatch)
    report = check_all(REPO / path, {"rules.dirs": [str(REPO / "rules")]})
    assert not errors(report.problems), "\n".join(errors(report.problems))
    assert report.rule_count >= 20


@pytest.mark.parametrize(("where", "values"), list(chart_values()))
def test_chart_values_configs_name_the_targets_the_image_rules_use(where: str, values: dict[str, Any], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values["config"]))
    dummy_secrets(load_config(path, {"rules.dirs": [str(REPO / "rules")]}), monkeypatch)
    report = check_all(path, {"rules.dirs": [str(REPO / "rules")]})
    assert not errors(report.problems), "\n".join(errors(report.problems))
