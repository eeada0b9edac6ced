"""The shipped rules library: it loads, its own rule tests pass, every runbook alert has a rule, and a
team that has not configured the targets gets clear step errors instead of a crash."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.processes import REPO

# Every alert name the runbooks use, and the rule that must take it.
RUNBOOK_ALERTS = {
    "legislative_monitor_down": "service-down", "ServiceDown": "service-down", "APIDown": "service-down",
    "error_rate_high": "high-error-rate", "HighErrorRate": "high-error-rate",
    "SlowAPIResponse": "slow-api-responses", "SlowAPIResponses": "slow-api-responses",
    "HighRequestRate": "high-request-rate",
    "database_connections_critical": "database-connections",
    "DatabaseConnectionPoolExhausted": "database-connections",
    "DatabaseDown": "database-down", "SlowDatabaseQueries": "slow-database-queries",
    "DatabaseLockAlert": "database-locks",
    "cache_performance_degraded": "cache-performance-degraded", "RedisDown": "redis-down",
    "RedisMemoryFull": "redis-memory-full",
    "external_api_all_down": "external-api-down",
    "HighMemoryUsage": "high-memory", "HighCPUUsage": "high-cpu",
    "DeploymentFailed": "deployment-failed", "KubeDeploymentRolloutStuck": "deployment-failed",
    "CeleryQueueBackup": "celery-queue-backup",
    "ETLJobFailed": "etl-job-failed", "ETLJobNotRunning": "etl-job-failed", "ScraperFailure": "etl-job-failed",
    "SSLCertificateExpiringSoon": "ssl-certificate-expiring",
    "SecurityIncident": "security-incident",
}


def responder(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "responder", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def test_the_library_passes_check_with_the_example_config() -> None:
    result = responder("check", "--config", "config.example.yaml")
    assert result.returncode == 0, result.stderr
    assert re.search(r"ok: .*config.example.yaml, \d+ rule\(s\)", result.stdout.replace("\n", ""))


def test_the_library_passes_its_rule_tests() -> None:
    result = responder("test-rules", "rules/tests", "--config", "config.example.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.search(r"(\d+) passed, 0 failed", result.stdout.replace("\n", " "))
    assert passed and int(passed.group(1)) >= 60


def test_every_runbook_alert_has_its_rule_and_a_rule_test(tmp_path: Path) -> None:
    cases = [{"name": f"{alert} is handled", "alert": {"labels": {"alertname": alert}},
              "expect": {"rules": [rule]}} for alert, rule in RUNBOOK_ALERTS.items()]
    test_file = tmp_path / "runbook-alerts.test.yaml"
    test_file.write_text(yaml.safe_dump({"rule_files": [str(REPO / "rules")], "tests": cases}))
    result = responder("test-rules", str(test_file), "--config", "config.example.yaml")
    assert result.returncode == 0, result.stdout
    tested = {match for f in (REPO / "rules" / "tests").glob("*.test.yaml")
              for match in re.findall(r"rules: \[([a-z0-9-]+)\]", f.read_text())}
    shipped = {rule["name"] for f in (REPO / "rules").glob("*.yaml")
               for rule in yaml.safe_load(f.read_text())["rules"]}
    assert shipped - tested == set(), "every shipped rule has test-rules cases"


def test_security_rules_never_act() -> None:
    rules = yaml.safe_load((REPO / "rules" / "05-security.yaml").read_text())["rules"]
    assert rules and all(r.get("mitigations", []) == [] and r["mode"] == "dry-run" and r["checklist"]
                         for r in rules)


def test_missing_targets_are_step_errors_not_a_crash(tmp_path: Path) -> None:
    """A config without targets (which `check` refuses): the database rule still runs, and every step says
    which target is missing."""
    payload = {"version": "4", "status": "firing", "receiver": "responder", "groupKey": "{}:{}",
               "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
               "alerts": [{"status": "firing", "labels": {"alertname": "database_connections_critical"},
                           "annotations": {}, "startsAt": "2030-01-01T00:00:00Z",
                           "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": "f1"}]}
    alert = tmp_path / "alert.json"
    alert.write_text(json.dumps(payload))
    config = tmp_path / "config.yaml"
    config.write_text(f"rules: {{dirs: [{REPO / 'rules'}]}}\n")
    result = responder("replay", str(alert), "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    [bundle] = json.loads(result.stdout)
    assert bundle["incident"]["rule"] == "database-connections"
    by_step = {e["step"]: e for e in bundle["evidence"]}
    for step in ("connections", "idle_in_transaction", "long_queries", "blocking"):
        assert by_step[step]["status"] == "error"
        assert "no postgres target named 'main'" in by_step[step]["text"]
    assert "labels.namespace is not set" in bundle["incident"]["error"]
