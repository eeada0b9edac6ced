"""Redis and HTTP actions against real servers, and the parameter checks that keep alert label values
from widening what an action touches."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from responder.config import load_config
from responder.mitigations.base import ActionContext
from responder.mitigations.http import HttpParams, HttpRequest
from responder.mitigations.kubernetes import ScaleParams
from responder.mitigations.redis import DeleteKeys, DeleteKeysParams
from responder.models import Incident, IncidentStatus
from responder.targets import Targets
from tests.support.admin import admin_endpoint

INCIDENT = Incident(1, "test", "fp", "CacheFull", IncidentStatus.OPEN, 0, 0, 0, 1, {}, {}, 1)


@asynccontextmanager
async def context(targets: dict[str, Any]) -> AsyncIterator[ActionContext]:
    async with Targets(load_config(None, {"targets": targets})) as opened:
        yield ActionContext(INCIDENT, opened)


async def test_delete_keys_scans_matching_keys_and_stops_at_the_cap(
        redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_URL", redis_url)
    client = aioredis.from_url(redis_url)
    try:
        await client.mset({f"{redis_prefix}cache:old:{i}": i for i in range(1200)})
        await client.mset({f"{redis_prefix}cache:new:{i}": i for i in range(10)})
        async with context({"redis": {"cache": {"url": {"env": "CACHE_URL"}}}}) as ctx:
            params = DeleteKeysParams(target="cache", pattern=f"{redis_prefix}cache:old:*", max_keys=1000)
            first = await DeleteKeys().execute(params, ctx)
            assert first == {"deleted": 1000, "cap": 1000, "cap_reached": True}
            second = await DeleteKeys().execute(params, ctx)
            assert second == {"deleted": 200, "cap": 1000, "cap_reached": False}
        assert len([k async for k in client.scan_iter(match=f"{redis_prefix}cache:old:*")]) == 0
        assert len([k async for k in client.scan_iter(match=f"{redis_prefix}cache:new:*")]) == 10
    finally:
        await client.aclose()


@pytest.mark.parametrize("pattern", ["*", "a*", "?cache", "[ab]*", "ca\\*", "cache: *"])
def test_delete_keys_refuses_patterns_without_a_literal_prefix(pattern: str) -> None:
    with pytest.raises(ValidationError):
        DeleteKeysParams(target="cache", pattern=pattern)


async def test_http_request_sends_secret_headers_and_fails_on_an_unexpected_status(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", "Bearer t0ken-value")
    async with admin_endpoint(status=500) as endpoint, context({"http": {"app": {"url": endpoint.url + "/base",
                                         "headers": {"Authorization": {"env": "ADMIN_TOKEN"}}}}}) as ctx:
        params = HttpParams.model_validate({"target": "app", "path": "/admin/rate-limit/emergency",
                                            "json": {"requests_per_minute": 100}})
        with pytest.raises(RuntimeError, match="answered 500"):
            await HttpRequest().execute(params, ctx)
        endpoint.status = 202
        result = await HttpRequest().execute(params, ctx)
    assert result["status"] == 202
    assert len({c["peer"] for c in endpoint.calls}) == 1, "both actions went over the targets' shared session"
    assert [(c["method"], c["path"], c["body"], c["authorization"]) for c in endpoint.calls] == [
        ("POST", "/base/admin/rate-limit/emergency", '{"requests_per_minute": 100}', "Bearer t0ken-value")] * 2


@pytest.mark.parametrize("path", ["admin", "//evil.example/x", "/a/../../etc", "/a b", "/a#frag", "/a\\b"])
def test_http_path_must_stay_under_the_target_url(path: str) -> None:
    with pytest.raises(ValidationError):
        HttpParams(target="app", path=path)


def test_scale_parameters_are_bounded() -> None:
    with pytest.raises(ValidationError, match="above max_replicas"):
        ScaleParams(namespace="prod", name="api", replicas=50, max_replicas=10)
    with pytest.raises(ValidationError, match="exactly one"):
        ScaleParams(namespace="prod", name="api", replicas=5, step=1, max_replicas=10)
    with pytest.raises(ValidationError):
        ScaleParams(namespace="prod; rm -rf /", name="api", step=1, max_replicas=10)
