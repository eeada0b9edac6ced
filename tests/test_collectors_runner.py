"""A rule's collectors run concurrently and within bounds; evidence is redacted; bad params are named."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

import tests.support.plugins  # noqa: F401  (registers test.sleep)
from responder.evidence import EvidenceStatus
from responder.metrics import Metrics
from responder.redaction import Redactor
from responder.targets import Targets
from tests.support.collectors import collect, config_with, run_steps, step


async def test_one_hung_collector_does_not_hold_back_three_working_ones() -> None:
    config = config_with(**{"collectors.commands.allow": ["echo"]})
    metrics = Metrics()
    started = time.monotonic()
    evidence = await run_steps(config,
                               step("test.sleep", {"seconds": 3600}, step_id="hangs", timeout=1.0),
                               step("test.sleep", {"seconds": 0.2}, step_id="a"),
                               step("command.run", {"argv": ["echo", "hello"]}, step_id="b"),
                               step("test.sleep", {"seconds": 0.5}, step_id="c"), metrics=metrics)
    elapsed = time.monotonic() - started
    by_step = {e.step: e for e in evidence}
    assert by_step["hangs"].status is EvidenceStatus.TIMEOUT
    assert all(by_step[s].status is EvidenceStatus.OK for s in "abc")
    assert by_step["b"].text == "hello"
    assert 0.95 <= elapsed < 1.6, elapsed
    runs = metrics.registry.get_sample_value("responder_collector_runs_total",
                                             {"collector": "test.sleep", "status": "timeout"})
    assert runs == 1
    assert metrics.registry.get_sample_value("responder_collector_duration_seconds_count",
                                             {"collector": "command.run"}) == 1


@pytest.mark.parametrize(("secret", "text"), [
    ("hunter2", "dsn postgresql://app:hunter2@db:5432/app"),
    ("eyJhbGciOiJIUzI1NiJ9.payload.sig", "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig"),
    ("xoxb-123456789012-abcdefghijkl", "slack token xoxb-123456789012-abcdefghijkl"),
    ("AKIAIOSFODNN7EXAMPLE", "key AKIAIOSFODNN7EXAMPLE"),
    ("ghp_" + "a" * 36, "push with ghp_" + "a" * 36),
    ("s3cr3t-value", "connect password=s3cr3t-value host=db"),
    ("ORD-99812", "order ORD-99812 failed"),
    ("configured-secret-xyz", "echoing configured-secret-xyz back"),
])
def test_each_secret_kind_is_redacted(secret: str, text: str) -> None:
    redactor = Redactor(["configured-secret-xyz"], [r"ORD-\d+"])
    assert secret not in redactor.text(text)
    assert "[REDACTED]" in redactor.text(text)


async def test_configured_secret_never_reaches_evidence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PG_DSN", "postgresql://app:Zq9-not-a-pattern@127.0.0.1:1/x")
    monkeypatch.setenv("TEST_TOKEN", "plainvalue-4242")
    config = config_with(**{"collectors.commands.allow": ["echo"], "targets.postgres": {
        "db": {"dsn": {"env": "TEST_PG_DSN"}}}, "targets.prometheus": {
        "p": {"url": "http://127.0.0.1:1", "bearer_token": {"env": "TEST_TOKEN"}}}})
    evidence = await run_steps(config, step("command.run", {"argv": ["echo", "token plainvalue-4242 used"]}))
    assert "plainvalue-4242" not in repr(evidence[0].as_dict()) and "[REDACTED]" in evidence[0].text


async def test_commands_outside_the_allow_list_or_with_option_args_are_refused(tmp_path: Path) -> None:
    config = config_with(**{"collectors.commands.allow": ["echo"], "collectors.commands.output_bytes": 100,
                            "collectors.commands.timeout": 0.5})
    refused = await collect(config, "command.run", argv=["cat", "/etc/passwd"])
    assert refused.status is EvidenceStatus.ERROR and "not in collectors.commands.allow" in refused.text
    with pytest.raises(ValueError, match="starts with '-'"):
        step("command.run", {"argv": ["echo"], "args": ["--help"]})
    with pytest.raises(ValueError, match="path"):
        step("command.run", {"argv": ["echo"], "args": ["../../etc/passwd"]})
    # A path argument may be a path, never a URL a tool would fetch (curl file:///etc/shadow).
    for url in ("file:///etc/shadow", "FILE:/etc/shadow", "file:etc/shadow", "gopher://127.0.0.1/", "http://x/"):
        with pytest.raises(ValueError, match="looks like a URL"):
            step("command.run", {"argv": ["echo"], "args": [url], "args_may_be_paths": True})
    assert step("command.run", {"argv": ["echo"], "args": ["/var/log/app.log", "db:5432"], "args_may_be_paths": True})
    long = await collect(config, "command.run", argv=["echo"], args=["x" * 500])
    assert long.payload["output_truncated"] is True and long.payload["stdout_bytes"] == 501
    sleeper = config_with(**{"collectors.commands.allow": ["sleep"], "collectors.commands.timeout": 0.3})
    started = time.monotonic()
    slow = await collect(sleeper, "command.run", argv=["sleep", "30"])
    assert slow.status is EvidenceStatus.TIMEOUT and time.monotonic() - started < 2


def test_check_names_file_rule_and_key_of_a_bad_collector_param(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "db.yaml").write_text(
        "rules:\n- name: db-slow\n  match: ['alertname=\"DbSlow\"']\n  collectors:\n"
        "    - type: postgres.long_queries\n      params: {target: main, min_duration: soon}\n"
        "    - type: command.run\n      params: {argv: ['{{ labels.tool }}']}\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"rules: {{dirs: [{rules}]}}\n")
    result = subprocess.run([sys.executable, "-m", "responder", "check", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1
    assert "db.yaml" in output and "db-slow" in output and "collectors.0.params.min_duration" in output
    assert "collectors.1.params.argv" in output and "literally" in output


async def test_cancelling_a_job_cancels_and_awaits_its_collectors() -> None:
    config = config_with()
    running = asyncio.create_task(run_steps(config, step("test.sleep", {"seconds": 3600}, step_id="long-a"),
                                            step("test.sleep", {"seconds": 3600}, step_id="long-b")))
    await asyncio.sleep(0.2)
    assert {t.get_name() for t in asyncio.all_tasks()} >= {"collector:long-a", "collector:long-b"}
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("collector:")], "a collector outlived its job"


async def test_a_target_client_is_made_once_however_many_ask_for_it_first() -> None:
    made: list[str] = []

    async def slow_factory(spec: Any, stack: AsyncExitStack) -> object:
        made.append(spec.url.env)
        await asyncio.sleep(0.05)  # a kubeconfig being read: others ask meanwhile
        return object()

    config = config_with(**{"targets.redis": {"cache": {"url": {"env": "CACHE_URL"}}}})
    async with Targets(config) as targets:
        clients = await asyncio.gather(*(targets.client("redis", "cache", slow_factory) for _ in range(10)))
    assert made == ["CACHE_URL"]
    assert all(c is clients[0] for c in clients)
