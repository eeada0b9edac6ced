"""Rule unit tests: YAML cases kept beside the rules, run by `responder test-rules` (like promtool test rules).

    rule_files: [../]            # optional: rule files or directories, relative to this file
    tests:
      - name: error rate pages and restarts the deployment
        alert:                   # or `alerts: [...]` (several alerts of one group), or `payload: sample.json`
                                 # (an Alertmanager, Grafana or PagerDuty body; each alert on its own)
          labels: {alertname: HighErrorRate, namespace: shop, deployment: api}
          annotations: {summary: "5xx above 5%"}
          source: alertmanager   # default
          status: firing         # default
        expect:
          rules: [errors-and-latency]          # matched rules in order; [] means unmatched
          group_key: "namespace=shop,deployment=api"   # the incident the alert(s) fall into (optional)
          collectors:                          # each listed step must be there, with these rendered params
            - {type: kubernetes.pods, params: {namespace: shop}}
          mitigations:
            - {type: kubernetes.rollout_restart, params: {name: api}, guard: allowed}   # or blocked:<guard>
          errors: []                           # step errors (substrings), when a label is missing on purpose
        evidence:                  # optional: collector step id -> {payload, status}; `when:` is then evaluated
          rollout: {payload: {newest_revision_age_seconds: 300}}     # guard: blocked:condition when false

Expectations are subsets: params list only the keys that matter; steps are matched by `id`, else by type.
"""

from __future__ import annotations

import difflib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from responder.config import Config, format_validation_error
from responder.evidence import Evidence, EvidenceStatus
from responder.models import Alert, AlertStatus
from responder.preview import AlertPreview, preview, step_params
from responder.replay import parse_payload
from responder.rules.engine import RuleSet
from responder.rules.grouping import group_key
from responder.rules.loader import load_rules
from responder.store import open_store


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AlertSpec(_Strict):
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    source: str = "alertmanager"
    status: Literal["firing", "resolved"] = "firing"


class StepExpectation(_Strict):
    type: str | None = None
    id: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    guard: str | None = None  # "allowed" or "blocked:<guard>"


class Expectation(_Strict):
    rules: list[str]
    group_key: str | None = None
    collectors: list[StepExpectation] | None = None
    mitigations: list[StepExpectation] | None = None
    errors: list[str] | None = None


class EvidenceSpec(_Strict):
    """What a collector step found, as its payload; `when:` conditions are tested on it."""

    status: EvidenceStatus = EvidenceStatus.OK
    payload: dict[str, Any] = Field(default_factory=dict)


class Case(_Strict):
    name: str
    alert: AlertSpec | None = None
    # Several alerts of one group: the steps are rendered for their incident (shared labels, for_each).
    alerts: list[AlertSpec] | None = None
    payload: Path | None = None
    source: str | None = None
    # Collector step id -> its evidence. Given, mitigations' `when:` conditions are evaluated on it
    # (a false one shows as `guard: blocked:condition`); absent, conditions are not evaluated.
    evidence: dict[str, EvidenceSpec] | None = None
    expect: Expectation


class TestFile(_Strict):
    rule_files: list[Path] | None = None
    tests: list[Case]


@dataclass
class CaseResult:
    file: Path
    name: str
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def _diff(expected: Any, actual: Any) -> str:
    want = yaml.safe_dump(expected, sort_keys=False).splitlines()
    got = yaml.safe_dump(actual, sort_keys=False).splitlines()
    return "\n".join(difflib.unified_diff(want, got, "expected", "actual", lineterm=""))


def _alerts(case: Case, base: Path, config: Config) -> list[Alert]:
    if case.payload is not None:
        path = case.payload if case.payload.is_absolute() else base / case.payload
        return parse_payload(config, path.read_bytes(), case.source).alerts
    specs = case.alerts or ([case.alert] if case.alert is not None else [])
    return [Alert(spec.source, AlertStatus(spec.status), f"test:{case.name}:{i}", time.time(), spec.labels,
                  spec.annotations) for i, spec in enumerate(specs)]


def _evidence(case: Case) -> list[Evidence] | None:
    if case.evidence is None:
        return None
    return [Evidence(step, "test", f"evidence given by the test for {step}", spec.status, 0.0, spec.payload, "")
            for step, spec in case.evidence.items()]


def _actual_steps(p: AlertPreview, kind: str) -> list[dict[str, Any]]:
    steps = []
    for rule in p.rules:
        rendered = rule.collectors if kind == "collectors" else rule.mitigations
        for i, step in enumerate(rendered):
            entry: dict[str, Any] = {"id": step.id, "type": step.type, "params": step_params(step)}
            if kind == "mitigations":
                decision = rule.decisions[i]
                entry["guard"] = "allowed" if decision.outcome == "allowed" else f"blocked:{decision.guard}"
            steps.append(entry)
    return steps


def _check_steps(kind: str, expected: list[StepExpectation], actual: list[dict[str, Any]]) -> list[str]:
    problems = []
    for want in expected:
        candidates = [a for a in actual if (want.id and a["id"] == want.id) or (not want.id and a["type"] == want.type)]
        wanted = want.model_dump(exclude_none=True, exclude_defaults=True)
        match = next((a for a in candidates if all(a["params"].get(k) == v for k, v in want.params.items())
                      and (want.guard is None or a.get("guard") == want.guard)), None)
        if match is None:
            shown = [{k: a[k] for k in ("id", "type", "params", "guard") if k in a} for a in candidates or actual]
            problems.append(f"{kind}: no step matches the expectation\n{_diff(wanted, shown)}")
    return problems


async def run_case(config: Config, ruleset: RuleSet, file: Path, case: Case, store: Any) -> CaseResult:
    result = CaseResult(file, case.name)
    try:
        alerts = _alerts(case, file.parent, config)
    except (OSError, ValueError) as exc:
        result.problems.append(f"cannot build the alert: {exc}")
        return result
    if not alerts:
        result.problems.append("give the case an `alert`, `alerts` or a `payload`")
    # `alerts:` is one group; a payload's alerts are tested one by one.
    groups = [alerts] if case.alerts else [[alert] for alert in alerts]
    for group in groups:
        p = await preview(config, ruleset, store, group[0], _evidence(case), members=group)
        matched = [r.rule for r in p.rules]
        for rule in p.rules:
            keys = sorted({group_key(next(r for r in ruleset.rules if r.name == rule.rule), a) for a in group})
            if len(keys) > 1:
                result.problems.append(f"rule {rule.rule}: the alerts fall into different groups: {keys}")
            if case.expect.group_key is not None and rule.group_key != case.expect.group_key:
                result.problems.append(f"rule {rule.rule}: group key differs\n"
                                       f"{_diff(case.expect.group_key, rule.group_key)}")
        if matched != case.expect.rules:
            result.problems.append(f"matched rules differ\n{_diff(case.expect.rules, matched)}")
        if case.expect.collectors is not None:
            result.problems += _check_steps("collectors", case.expect.collectors, _actual_steps(p, "collectors"))
        if case.expect.mitigations is not None:
            result.problems += _check_steps("mitigations", case.expect.mitigations, _actual_steps(p, "mitigations"))
        errors = [e for r in p.rules for e in r.errors]
        if case.expect.errors is not None:
            missing = [e for e in case.expect.errors if not any(e in got for got in errors)]
            if missing or (not case.expect.errors and errors):
                result.problems.append(f"step errors differ\n{_diff(case.expect.errors, errors)}")
    return result


def load_test_file(path: Path) -> TestFile:
    try:
        return TestFile.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except ValidationError as exc:
        raise ValueError("\n".join(map(str, format_validation_error(str(path), exc, TestFile)))) from None


async def run_files(config: Config, paths: list[Path]) -> list[CaseResult]:
    results: list[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="responder-rule-tests-") as tmp:
        # A fresh store: guard outcomes depend on the rules and the config, not on what ran yesterday.
        store = await open_store(f"sqlite:///{Path(tmp) / 'tests.db'}")
        try:
            for path in paths:
                spec = load_test_file(path)
                dirs = [p if p.is_absolute() else path.parent / p for p in spec.rule_files or []]
                rules, problems = load_rules(dirs or config.rule_dirs())
                if problems:
                    results.append(CaseResult(path, "(loading rules)", [str(p) for p in problems]))
                    continue
                ruleset = RuleSet(rules, config.rules.default_rule)
                for case in spec.tests:
                    results.append(await run_case(config, ruleset, path, case, store))
        finally:
            await store.close()
    return results
