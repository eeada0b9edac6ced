"""`when:` conditions: what they accept, how they evaluate, and that `responder check` names a bad one."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from responder.cli import main as cli_main
from responder.evidence import Evidence, EvidenceStatus
from responder.models import Incident, IncidentStatus
from responder.rules.conditions import ConditionError, evaluate, parse_condition

INCIDENT = Incident(7, "alertmanager", "fp", "PgConnections", IncidentStatus.OPEN, time.time() - 60, time.time(),
                    time.time(), 3, {"severity": "critical", "namespace": "prod"}, {"summary": "too many"}, 1)


def evidence(step: str, payload: dict[str, object], status: EvidenceStatus = EvidenceStatus.OK) -> Evidence:
    return Evidence(step, "test", step, status, 1.0, payload, "")


ROLLOUT = evidence("history", {"revisions": [{"revision": 4, "created_at": time.time() - 600},
                                             {"revision": 3, "created_at": "2020-01-01T00:00:00Z"}]})
SESSIONS = evidence("sessions", {"rows": [{"pid": 1}, {"pid": 2}, {"pid": 3}], "idle": "12"})


@pytest.mark.parametrize(("conditions", "holds"), [
    (["evidence.history.payload.revisions.0.created_at age < 30m"], True),
    (["age(evidence.history.payload.revisions.1.created_at) < 30m"], False),
    (["count(evidence.sessions.payload.rows) > 2", "evidence.sessions.payload.idle >= 12"], True),
    (["count(evidence.sessions.payload.rows) > 5"], False),
    (['labels.severity == "critical"', "incident.deliveries == 3", "incident.status != 'resolved'"], True),
    (['labels.namespace =~ "prod|staging"', "evidence.history.status == 'ok'"], True),
    (["labels.team == 'db'"], False),  # a missing label is false, never an error
    (["evidence.nothere.payload.x > 1"], False),
])
def test_conditions_evaluate(conditions: list[str], holds: bool) -> None:
    assert evaluate(conditions, INCIDENT, [ROLLOUT, SESSIONS])[0] is holds


def test_failed_collector_makes_its_conditions_false_with_the_reason() -> None:
    failed = evidence("sessions", {"rows": [1, 2, 3]}, EvidenceStatus.TIMEOUT)
    assert evaluate(["count(evidence.sessions.payload.rows) > 0"], INCIDENT, [failed]) == (
        False, "condition 'count(evidence.sessions.payload.rows) > 0' is false: evidence 'sessions' is timeout, not ok")
    assert evaluate(["count(evidence.sessions.payload.rows) > 5"], INCIDENT, [SESSIONS]) == (
        False, "condition 'count(evidence.sessions.payload.rows) > 5' is false:"
               " count(evidence.sessions.payload.rows) is 3")


@pytest.mark.parametrize("text", [
    "__import__('os').system('x') == 1", "labels.x", "labels.x <> 1", "foo.bar == 1",
    "labels.x =~ '('", "count(labels.x == 1", "labels.x == 1 or 1 == 1",
])
def test_unsafe_or_malformed_conditions_are_refused(text: str) -> None:
    with pytest.raises(ConditionError):
        parse_condition(text)


def test_check_reports_a_bad_condition_with_file_rule_and_key(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "db.yaml").write_text("""
rules:
  - name: db-idle
    match: ['alertname="PgConnections"']
    mitigations:
      - type: postgres.terminate_idle
        when: ["count(evidence.sessions.rows) > 5"]
        params: {target: db}
""")
    assert cli_main(["check", "--rules", str(rules)]) == 1
    err = capsys.readouterr().err
    assert "db.yaml:7: rule 'db-idle': mitigations.0.when.0:" in err and "evidence.sessions.rows" in err
