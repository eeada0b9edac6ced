"""Typed rendered values: a label written into a path, a PromQL query or a Redis pattern stays data,
whatever the rule author forgot. Against real endpoints: the admin endpoint, Prometheus and Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from responder.evidence import EvidenceStatus
from responder.mitigations.http import HttpRequest
from responder.mitigations.redis import DeleteKeys
from responder.models import Alert, AlertStatus
from responder.rules.engine import render_steps
from responder.rules.loader import load_rules
from responder.rules.model import Rule
from responder.steps import RenderedStep
from tests.conftest import write_rules
from tests.support.admin import admin_endpoint
from tests.support.collectors import config_with, run_steps
from tests.support.prometheus import Prometheus
from tests.test_mitigations_actions import context


def load(tmp_path: Path, text: str) -> tuple[list[Rule], list[str]]:
    rules, problems = load_rules([write_rules(tmp_path / "rules", text)])
    return rules, [str(p) for p in problems]


def rendered(rule: Rule, *members: dict[str, str], **labels: str
             ) -> tuple[list[RenderedStep], list[RenderedStep], list[str]]:
    """Steps for an alert with `labels`, its own group's only member unless `members` (their labels) are given."""
    alert = Alert("alertmanager", AlertStatus.FIRING, "fp", time.time(), {"alertname": "X", **labels})
    group = [dataclasses.replace(alert, fingerprint=f"fp{i}", labels={**alert.labels, **m})
             for i, m in enumerate(members)] or [alert]
    collectors, mitigations, errors = render_steps(rule, alert, group)
    return collectors, mitigations, [str(e) for e in errors]


TRAVERSALS = ["%2e%2e/%2e%2e/danger", "../../danger", "..%2f..%2fdanger", "%252e%252e%252f%252e%252e%252fdanger",
              "..", ".", "%2e", "x?admin=1", "x#frag", "..\\..\\danger", "x/../../danger", "x%00", "x\r\nHost: evil",
              "//evil.example/", "%2F%2Fevil.example"]


@pytest.mark.parametrize("service", TRAVERSALS)
async def test_a_label_cannot_move_an_admin_call(tmp_path: Path, service: str, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    [rule], problems = load(tmp_path, """
rules:
  - name: admin
    match: ['alertname="X"']
    mitigations:
      - {id: enable, type: http.request, params: {target: app, path: "/admin/{{ labels.service }}/enable"}}
""")
    assert not problems
    monkeypatch.setenv("ADMIN_TOKEN", "Bearer t0ken")
    async with admin_endpoint() as endpoint, context({"http": {"app": {
            "url": endpoint.url + "/base", "headers": {"Authorization": {"env": "ADMIN_TOKEN"}}}}}) as ctx:
        _, mitigations, errors = rendered(rule, service=service)
        for step in mitigations:
            await HttpRequest().execute(step.params, ctx)
    if errors:  # refused when rendered: decoded, the path would leave /admin/ (or hide where it goes)
        assert not endpoint.calls and "must stay under the target's URL" in errors[0], errors
    else:  # sent as one opaque segment between /admin/ and /enable, exactly as the label was written
        assert [c["raw_path"] for c in endpoint.calls] == [f"/base/admin/{quote(service, safe='-._~')}/enable"]


def test_literal_traversal_in_a_rule_is_refused_when_it_loads(tmp_path: Path) -> None:
    for path in ("/admin/%2e%2e/x", "/a/../b", "/a/./b", "/a//b", "/a#f"):
        _, problems = load(tmp_path, f"""
rules:
  - name: admin
    match: ['alertname="X"']
    mitigations: [{{id: a, type: http.request, params: {{target: app, path: "{path}"}}}}]
""")
        assert problems and "path" in problems[0], (path, problems)


def test_check_refuses_promql_templates_outside_the_string_literal_type(tmp_path: Path) -> None:
    cases = {
        'up{job="{{ labels.job }}"}': "must end with '| promql'",
        "up{job='{{ labels.job }}'}": "must end with '| promql'",
        "up{job=\"{{ labels.job | promql | upper }}\"}": "must end with '| promql'",
        "rate(up[{{ labels.window | promql }}])": "sits in no string literal",
        "up{job=`{{ labels.job | promql }}`}": "raw `...` string",
        # Inside a regular expression a value must match literally; a list of the group's values too.
        'up{pod!~"{{ labels.pod | promql }}"}': "sits in a regular expression",
        "up{pod=~ '{{ labels.pod | promql }}.*'}": "sits in a regular expression",
        'up{pod=~"{{ alerts.labels.pod | join("|") | promql }}"}': "'| regex_escape' on each value, before join",
        'up{pod=~"{{ alerts.labels.pod | regex_escape | promql | join("|") }}"}': "must end with '| promql' (after",
        'up{pod=~{{ alerts.labels.pod | regex_escape | join("|") | promql }}}': "sits in no string literal",
    }
    for query, message in cases.items():
        _, problems = load(tmp_path, f"""
rules:
  - name: q
    match: ['alertname="X"']
    collectors: [{{id: q, type: prometheus.query, params: {{target: main, query: {query!r}}}}}]
""")
        assert any(message in p and "collectors.0.params.query" in p for p in problems), (query, problems)


INJECTIONS = ['"} or vector(1) or up{x="', "'} or vector(1) or up{x='", '\\"} or vector(1) or up{x=\\"',
              "`} or vector(1) or up{x=`", "a\nb"]


async def test_promql_injection_stays_inside_the_literal(tmp_path: Path) -> None:
    [rule], problems = load(tmp_path, """
rules:
  - name: q
    match: ['alertname="X"']
    collectors:
      - {id: dq, type: prometheus.query, params: {target: main, query: 'up{job="{{ labels.job | promql }}"}'}}
      - {id: sq, type: prometheus.query, params: {target: main, query: "up{job='{{ labels.job | promql }}'}"}}
      - {id: re, type: prometheus.query,
         params: {target: main, query: 'up{job=~"{{ labels.job | regex_escape | promql }}"}'}}
      - {id: members, type: prometheus.query,
         params: {target: main, query: 'up{job=~"{{ alerts.labels.job | regex_escape | join("|") | promql }}"}'}}
""")
    assert not problems

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="queue_depth 1\n", content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    async with TestServer(app, host="127.0.0.1") as target, \
            Prometheus(tmp_path / "prom", scrape=[f"127.0.0.1:{target.port}"]) as prom:
        config = config_with(**{"targets.prometheus": {"main": {"url": prom.url}}})
        deadline = time.monotonic() + 20
        while True:  # until `up{job="test"}` has a sample, so an injected `or up{...}` would find one
            [probe] = await run_steps(config, rendered(rule, job="test")[0][0])
            if probe.payload.get("series_count") or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert probe.payload["series_count"] == 1, probe.text
        for injection in INJECTIONS:
            collectors, _, errors = rendered(rule, job=injection)
            assert not errors
            for evidence in await run_steps(config, *collectors):
                # A well-formed query for a job that does not exist: no error, and no injected vector(1).
                assert evidence.status is EvidenceStatus.OK, (injection, evidence.step, evidence.text)
                assert evidence.payload["series_count"] == 0, (injection, evidence.step, evidence.text)
        # A group whose members name every injection and the real job: the alternation matches that job only.
        for jobs, series in ((INJECTIONS, 0), ([*INJECTIONS, "test"], 1)):
            collectors, _, errors = rendered(rule, *({"job": job} for job in jobs))
            assert not [e for e in errors if e.startswith("members")], errors
            [evidence] = await run_steps(config, *(c for c in collectors if c.id == "members"))
            assert evidence.status is EvidenceStatus.OK, evidence.text
            assert evidence.payload["series_count"] == series, (jobs, evidence.text)


async def test_a_label_cannot_widen_a_redis_pattern(tmp_path: Path, redis_url: str, redis_prefix: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    [rule], problems = load(tmp_path, f"""
rules:
  - name: flush
    match: ['alertname="X"']
    mitigations:
      - {{id: flush, type: redis.delete_keys,
         params: {{target: cache, pattern: "{redis_prefix}cache:{{{{ labels.service }}}}:*"}}}}
""")
    assert not problems
    monkeypatch.setenv("CACHE_URL", redis_url)
    client = aioredis.from_url(redis_url)
    try:
        for service in ("api", "web", "billing"):
            await client.mset({f"{redis_prefix}cache:{service}:{i}": i for i in range(5)})
        async with context({"redis": {"cache": {"url": {"env": "CACHE_URL"}}}}) as ctx:
            for service in ("*", "?pi", "[aw]*", "a\\", "^x", "api]"):
                _, mitigations, errors = rendered(rule, service=service)
                assert not errors
                assert (await DeleteKeys().execute(mitigations[0].params, ctx))["deleted"] == 0, service
            assert len([k async for k in client.scan_iter(match=f"{redis_prefix}cache:*")]) == 15
            _, mitigations, _ = rendered(rule, service="api")
            assert (await DeleteKeys().execute(mitigations[0].params, ctx))["deleted"] == 5
    finally:
        await client.aclose()
