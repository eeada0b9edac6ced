"""Fuzzing the three intakes: arbitrary bytes and JSON never give a 500 or an unhandled exception."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from responder.config import IntakeConfig
from responder.intake import PayloadError
from responder.intake.alertmanager import AlertmanagerIntake
from responder.intake.grafana import GrafanaIntake
from responder.intake.pagerduty import PagerDutyIntake
from tests.conftest import make_config, write_rules
from tests.support.alerts import am_payload
from tests.support.vendors import grafana_payload, pd_event

INTAKES = [AlertmanagerIntake(IntakeConfig()), GrafanaIntake(IntakeConfig()), PagerDutyIntake(IntakeConfig())]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


def mutate(base: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """Put an arbitrary value somewhere inside a valid payload: the nastiest inputs are nearly right."""
    data = json.loads(json.dumps(base))
    node = data
    for key in path[:-1]:
        child = node.get(key) if isinstance(node, dict) else None
        if isinstance(child, list) and child:
            child = child[0]
        if not isinstance(child, dict):
            break
        node = child
    if isinstance(node, dict):
        node[path[-1]] = value
    return data


def parse_all(body: bytes) -> None:
    for intake in INTAKES:
        # PayloadError is the one acceptable refusal (a 400 naming the problem); anything else fails.
        with contextlib.suppress(PayloadError):
            intake.parse(body, {})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(body: bytes) -> None:
    parse_all(body)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json(value: Any) -> None:
    parse_all(json.dumps(value).encode())


VALID = [am_payload(), grafana_payload(), pd_event()]
PATHS = [["version"], ["alerts", "labels"], ["alerts", "startsAt"], ["alerts", "status"], ["alerts", "fingerprint"],
         ["alerts"], ["status"], ["event", "data"], ["event", "data", "created_at"], ["event", "event_type"],
         ["event", "data", "service"], ["alerts", "values"], ["orgId"], ["event", "occurred_at"]]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(VALID), st.sampled_from(PATHS), json_values)
def test_nearly_valid_payloads(base: dict[str, Any], path: list[str], value: Any) -> None:
    parse_all(json.dumps(mutate(base, path, value)).encode())


@pytest.fixture
async def app_client(tmp_path: Path, daemon_client: Any) -> Any:
    config = make_config(f"sqlite:///{tmp_path / 'fuzz.db'}", write_rules(tmp_path / "rules", "rules: []\n"),
                         intakes={name: {"auth": {"unauthenticated": "loopback"}}
                                  for name in ("alertmanager", "grafana", "pagerduty")})
    client, _ = await daemon_client(config)
    return client


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_http_endpoints_never_answer_500(app_client: Any) -> None:
    """Through the real server: a sample of hostile bodies on every intake; only 200/400/413 come back."""
    bodies = [b"", b"\x00\xff", b"[]", b"null", b'{"version": "4"}', b'{"event": {}}', b"{" * 5000,
              json.dumps(mutate(am_payload(), ["alerts", "labels"], {"a": {"b": 1}})).encode(),
              json.dumps(mutate(pd_event(), ["event", "data"], [1, 2])).encode(),
              json.dumps(mutate(grafana_payload(), ["alerts", "values"], "x")).encode(),
              json.dumps({"version": "4", "status": "firing", "alerts": [{"status": "firing", "labels": {},
                          "startsAt": "0001-01-01T00:00:00Z"}]}).encode()]
    for path in ("/webhooks/alertmanager", "/webhooks/grafana", "/webhooks/pagerduty"):
        for body in bodies:
            resp = await app_client.post(path, data=body, headers={"Content-Type": "application/json"})
            assert resp.status in (200, 400, 413), (path, body[:60], resp.status, await resp.text())
            assert "error" in await resp.json() or resp.status == 200


