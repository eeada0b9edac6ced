"""Rules: Alertmanager matcher semantics, safe templates, validation with file/rule/key, `responder check`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from responder.models import Alert, AlertStatus
from responder.rules.engine import RuleSet, render_steps
from responder.rules.loader import load_rules
from responder.rules.matchers import Matcher, MatcherError, parse_matchers
from responder.rules.templating import TemplateError, check_template, render
from tests.support.processes import REPO, daemon_env

LABELS = {"alertname": "HighErrorRate", "severity": "critical", "namespace": "prod", "instance": "test-1"}


@pytest.mark.parametrize(("matcher", "expected"), [
    ('alertname="HighErrorRate"', True),
    ('alertname="HighError"', False),
    ('alertname!="HighErrorRate"', False),
    ('severity=~"critical|page"', True),
    ('severity=~"crit"', False),              # anchored: a prefix is not a match
    ('severity=~"crit.*"', True),
    ('severity!~"warning|info"', True),
    ('instance!~"test-.*"', False),
    ('namespace!="kube-system"', True),
    ('team=""', True),                        # a missing label is the empty string
    ('team!=""', False),
    ('team=~".*"', True),
    ('team=~".+"', False),
    ("alertname=HighErrorRate", True),        # unquoted values, as amtool accepts them
    ('summary="a \\"quoted\\" word"', False),
])
def test_matcher_semantics(matcher: str, expected: bool) -> None:
    assert Matcher.parse(matcher).matches(LABELS) is expected


def test_matcher_list_string_and_errors() -> None:
    assert [str(m) for m in parse_matchers('{alertname="A", severity=~"x,y"}')] == [
        'alertname="A"', 'severity=~"x,y"']
    for bad in ['alertname=="x"', '1abc="x"', 'a=~"("', "a"]:
        with pytest.raises(MatcherError):
            Matcher.parse(bad)


CTX = {"labels": {"namespace": "prod", "evil": "x; rm -rf / #", "path": "../../etc/passwd"},
       "annotations": {"summary": "it broke"}, "alert": {"name": "A"}}


def test_templates_render_lookups_and_defaults() -> None:
    assert render("ns={{ labels.namespace }} s={{annotations.summary}}", CTX) == "ns=prod s=it broke"
    assert render('{{ labels.team | default("platform") }}', CTX) == "platform"
    assert render("{{ labels.namespace | upper }}", CTX) == "PROD"
    assert render('up{ns="{{ labels.evil | promql }}"}', {"labels": {"evil": 'a"}'}}) == 'up{ns="a\\x22}"}'
    with pytest.raises(TemplateError, match=r"labels\.team is not set"):
        render("{{ labels.team }}", CTX)


@pytest.mark.parametrize("attempt", [
    "{{ ''.__class__ }}",
    "{{ labels.__class__.__mro__ }}",
    "{{ labels['namespace'] }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ labels.namespace | attr('__class__') }}",
    "{% for x in labels %}{{ x }}{% endfor %}{{ labels.x",
])
def test_template_injection_is_a_syntax_error(attempt: str) -> None:
    with pytest.raises(TemplateError):
        check_template(attempt)
    with pytest.raises(TemplateError):
        render(attempt, CTX)


RULES_WITH_STEPS = """
rules:
  - name: restart-api
    match: ['alertname="HighErrorRate"']
    collectors:
      - type: test.sleep
        params: {seconds: 0, label: "{{ labels.namespace }}"}
    mitigations:
      - type: test.record
        params: {target: "{{ labels.evil }}"}
"""


def test_label_values_with_shell_metacharacters_or_paths_are_rejected_when_rendered(tmp_path: Path) -> None:
    import tests.support.plugins  # noqa: F401  (registers test.sleep / test.record)
    from responder.params import K8sName

    (tmp_path / "r.yaml").write_text(RULES_WITH_STEPS)
    rules, problems = load_rules([tmp_path])
    assert problems == []
    alert = Alert("alertmanager", AlertStatus.FIRING, "fp", 1.0, {"alertname": "HighErrorRate", **CTX["labels"]})
    collectors, mitigations, errors = render_steps(rules[0], alert)
    assert [c.params.label for c in collectors] == ["prod"]  # type: ignore[attr-defined]
    # test.record takes any string; the Kubernetes name type is what stands between labels and the API:
    from pydantic import TypeAdapter, ValidationError

    for hostile in (CTX["labels"]["evil"], CTX["labels"]["path"], "Prod", "a" * 300):
        with pytest.raises(ValidationError):
            TypeAdapter(K8sName).validate_python(hostile)
    assert errors == [] and len(mitigations) == 1


def test_rule_order_first_match_wins_unless_continue(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("""
rules:
  - {name: first, match: ['severity="critical"'], continue: true}
  - {name: second, match: ['alertname=~"High.*"']}
  - {name: third, match: ['alertname="HighErrorRate"']}
  - {name: fallback, match: []}
""")
    rules, problems = load_rules([tmp_path])
    assert problems == []
    alert = Alert("alertmanager", AlertStatus.FIRING, "fp", 1.0, LABELS)
    assert [r.name for r in RuleSet(rules).match(alert)] == ["first", "second"]
    other = Alert("alertmanager", AlertStatus.FIRING, "fp", 1.0, {"alertname": "Other"})
    assert [r.name for r in RuleSet(rules, "fallback").match(other)] == ["fallback"]
    verdicts = RuleSet(rules).explain(other)
    assert [(v.rule.name, v.matched, [str(m) for m in v.failed]) for v in verdicts][:2] == [
        ("first", False, ['severity="critical"']), ("second", False, ['alertname=~"High.*"'])]


BROKEN = """
rules:
  - name: bad-matcher
    match: ['severity=~"(unclosed"']
  - name: unknown-collector
    match: ['alertname="A"']
    collectors:
      - type: kubernetes.crystal_ball
  - name: bad-template
    match: ['alertname="B"']
    collectors:
      - type: test.sleep
        params: {label: "{{ ''.__class__ }}"}
  - name: bad-param
    match: ['alertname="C"']
    collectors:
      - type: test.sleep
        params: {seconds: "soon"}
  - name: unjoined-list
    match: ['alertname="D"']
    group_by: [deployment]
    collectors:
      - type: test.sleep
        params:
          seconds: 0
          label: "pods {{ alerts.labels.pod | upper }}"
"""


def test_check_reports_every_problem_with_file_rule_and_key(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    rule_file = rules_dir / "broken.yaml"
    rule_file.write_text(BROKEN)
    config = tmp_path / "config.yaml"
    config.write_text("plugins: [tests.support.plugins]\nrules: {dirs: [rules]}\n")
    result = subprocess.run([sys.executable, "-m", "responder", "check", "--config", str(config)],
                            capture_output=True, text=True, env=daemon_env({"COLUMNS": "300"}), cwd=REPO, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert any(f"{rule_file}:4: rule 'bad-matcher': match: bad regular expression" in e for e in errors), errors
    assert any(f"{rule_file}:8: rule 'unknown-collector': collectors.0.type: unknown collector "
               "'kubernetes.crystal_ball'" in e for e in errors), errors
    assert any(f"{rule_file}:13: rule 'bad-template': collectors.0.params.label: unsupported template expression"
               in e for e in errors), errors
    assert any(f"{rule_file}:18: rule 'bad-param': collectors.0.params.seconds:" in e for e in errors), errors
    assert any(f"{rule_file}:26: rule 'unjoined-list': collectors.0.params.label: {{{{ alerts.labels.pod | upper }}}}"
               " is a list (one value per firing member): join it" in e for e in errors), errors
    assert "5 error(s)" in result.stderr


def test_check_names_the_config_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("server: {listen: nowhere}\npipeline: {workers: 0}\n")
    result = subprocess.run([sys.executable, "-m", "responder", "check", "--config", str(config)],
                            capture_output=True, text=True, env=daemon_env({"COLUMNS": "300"}), cwd=REPO, timeout=60)
    assert result.returncode == 1
    assert f"{config}:1: server: listen must be HOST:PORT" in result.stderr
    assert f"{config}:2: pipeline.workers:" in result.stderr


def test_example_config_passes_check_and_warns_about_unauthenticated_intake() -> None:
    result = subprocess.run([sys.executable, "-m", "responder", "check", "--config", "config.example.yaml"],
                            capture_output=True, text=True, cwd=REPO, timeout=60,
                            env=daemon_env({"COLUMNS": "300", "RESPONDER_ALERTMANAGER_TOKEN": ""}))
    assert result.returncode == 0, result.stderr
    assert "UNAUTHENTICATED from loopback" in result.stderr
