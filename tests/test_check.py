"""`responder check`: every problem in one pass, each with file, line, rule and key; cross-checks between
the config and the rules; plain URLs without a password accepted as targets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from responder.config import ConfigError, load_config, secret_values
from tests.support.processes import REPO, daemon_env

CONFIG = """\
server:
  listen: 127.0.0.1:8080
pipeline:
  wokers: 4
store:
  lease_seconds: soon
targets:
  kubernetes:
    default: {url: http://127.0.0.1:1, token: {env: CHECK_TEST_UNSET_TOKEN}}
  prometheus:
    main: {url: http://127.0.0.1:9090}
    spare: {url: http://127.0.0.1:9091}
rules:
  dirs: [rules]
"""

RULES = """\
rules:
  - name: needs-postgres
    match: ['alertname="A"']
    collectors:
      - id: sessions
        type: postgres.connections
        params: {target: orders}
      - type: kubernetes.pods
        params: {namespace: prod}
    mitigations:
      - id: terminate
        type: postgres.terminate_idle
        params: {target: orders}
        when:
          - count(evidence.sesions.payload.rows) > 5
        verify: {prometheus: {target: thanos, query: up, below: 1}}
  - name: unsafe-query
    match: ['alertname="B"']
    collectors:
      - type: prometheus.query
        params: {query: 'up{job="{{ labels.job }}"}'}
"""


def run_check(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "responder", "check", "--config", str(tmp_path / "config.yaml"),
                           *args], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env=daemon_env({"COLUMNS": "300", **(env or {})}))


def write(tmp_path: Path, config: str, rules: dict[str, str]) -> None:
    (tmp_path / "config.yaml").write_text(config)
    (tmp_path / "rules").mkdir()
    for name, text in rules.items():
        (tmp_path / "rules" / name).write_text(text)


def by_key(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{p['rule'] or ''}:{p['key']}": p for p in report["problems"]}


def test_check_reports_config_and_rule_problems_in_one_pass(tmp_path: Path) -> None:
    write(tmp_path, CONFIG, {"10-rules.yaml": RULES, "20-broken.yaml": "rules:\n  - name: x\n    match: [\n"})
    result = run_check(tmp_path, "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    problems = by_key(report)
    config_file = str(tmp_path / "config.yaml")
    rules_file = str(tmp_path / "rules" / "10-rules.yaml")

    # Config values: line numbers, and a suggestion for a misspelled key.
    assert problems[":pipeline.wokers"] == {"file": config_file, "rule": None, "key": "pipeline.wokers", "line": 4,
                                            "message": "unknown key (did you mean 'workers'?)", "severity": "error"}
    assert problems[":store.lease_seconds"]["line"] == 6
    # A YAML error names the real file and line.
    broken = next(p for p in report["problems"] if p["file"].endswith("20-broken.yaml"))
    assert broken["message"].startswith("not valid YAML") and broken["line"] == 4
    # Rules against the configured targets (the targets section was valid on its own).
    missing = problems["needs-postgres:collectors.0.params.target"]
    assert (missing["file"], missing["line"], missing["severity"]) == (rules_file, 7, "error")
    assert "no postgres target named 'orders'" in missing["message"] and "2 steps cannot run" in missing["message"]
    assert "needs-postgres:collectors.1.type" not in problems  # kubernetes 'default' is configured
    # A `when:` naming a step that does not exist.
    when = problems["needs-postgres:mitigations.0.when.0"]
    assert "'evidence.sesions.payload.rows' names no collector step" in when["message"] and when["line"] == 15
    # A verification asking a Prometheus that is not configured.
    verify = problems["needs-postgres:mitigations.0.verify.prometheus.target"]
    assert "no prometheus target named 'thanos'" in verify["message"] and verify["line"] == 16
    # A templated value that skips its safe filter.
    unsafe = problems["unsafe-query:collectors.0.params.query"]
    assert "{{ labels.job }} in a PromQL query must end with '| promql'" in unsafe["message"]
    assert unsafe["line"] == 21
    # A secret whose variable is unset, and a target nothing uses.
    unset = problems[":targets.kubernetes.default.token"]
    assert (unset["severity"], unset["line"]) == ("error", 9)
    assert "CHECK_TEST_UNSET_TOKEN is unset" in unset["message"]
    assert problems[":targets.prometheus.spare"]["severity"] == "warning"


def test_check_text_output_and_exit_codes(tmp_path: Path) -> None:
    write(tmp_path, "targets:\n  prometheus:\n    main: {url: http://127.0.0.1:9090}\n    spare: {url: http://x}\n"
                    "rules: {dirs: [rules]}\n",
          {"r.yaml": "rules:\n  - name: q\n    match: ['alertname=\"Q\"']\n    collectors:\n"
                     "      - {type: prometheus.query, params: {target: main, query: up}}\n"})
    result = run_check(tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"warning: {tmp_path / 'config.yaml'}:4: targets.prometheus.spare: no rule uses this target" \
        in result.stderr
    assert "ok:" in result.stdout and "1 rule(s)" in result.stdout


def test_plain_urls_without_a_password_are_accepted_as_targets() -> None:
    config = load_config(None, {"targets": {"redis": {"cache": {"url": "redis://127.0.0.1:6379/0"}},
                                            "postgres": {"main": {"dsn": "postgresql://postgres@127.0.0.1/test"}}}})
    secret = config.targets.redis["cache"].url.resolve()
    assert secret is not None and secret.reveal() == "redis://127.0.0.1:6379/0"
    assert "redis://127.0.0.1:6379/0" not in secret_values(config)  # no secret: evidence may name it


@pytest.mark.parametrize("url", ["redis://:hunter2@127.0.0.1:6379/0", "postgresql://u:hunter2@db/app"])
def test_a_url_with_a_password_must_come_from_a_secret(url: str) -> None:
    kind, key = ("redis", "url") if url.startswith("redis") else ("postgres", "dsn")
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"targets": {kind: {"x": {key: url}}}})
    message = str(caught.value)
    assert f"targets.{kind}.x.{key}" in message and "write {env: NAME}" in message
    assert "hunter2" not in message
