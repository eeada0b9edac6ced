"""The README's quick start as a new user runs it: the daemon on config.example.yaml, the README's own curl
command (startsAt is "now"), the console showing what the README says, then the incident read back and
closed with the CLI."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import REPO, daemon_env, responder_daemon, wait_http
from tests.support.services import free_port

pytestmark = pytest.mark.slow

README = (REPO / "README.md").read_text()


def readme_block(heading: str, language: str) -> str:
    section = README.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"no {language} block under '## {heading}'"
    return match.group(1)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "responder", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=60)


async def wait_for(proc: Any, pattern: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, proc.output(), re.S):
            return str(proc.output())
        await asyncio.sleep(0.2)
    raise AssertionError(f"{pattern!r} not in the console within {timeout}s:\n{proc.output()[-4000:]}")


def test_readme_set_up_commands_name_what_exists() -> None:
    setup = readme_block("Set up", "sh")
    assert "pip install -e . && .venv/bin/responder serve --config config.example.yaml" in setup
    assert "pip install -e '.[test]' && .venv/bin/python -m pytest -q" in README
    assert "test" in (REPO / "pyproject.toml").read_text().split("[project.optional-dependencies]", 1)[1]


async def test_the_readme_curl_example_shows_what_the_readme_says(tmp_path: Path) -> None:
    port = free_port()
    # No kubeconfig, no token variable: the README's first run, on a machine with none of the targets.
    env = {"HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "no-kubeconfig"), "RESPONDER_ALERTMANAGER_TOKEN": "",
           "RESPONDER_SLACK_BOT_TOKEN": "", "COLUMNS": "200"}
    store = f"sqlite:///{tmp_path / 'responder.db'}"
    with responder_daemon(REPO / "config.example.yaml", port, tmp_path / "daemon.log", extra_env=env,
                          args=["--store", store]) as daemon:
        await wait_http(f"http://127.0.0.1:{port}/readyz", proc=daemon, timeout=60)
        curl = readme_block("Send it an alert", "sh").replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        answer = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30)
        assert json.loads(answer.stdout)["status"] == "accepted", answer.stdout + answer.stderr

        console = await wait_for(daemon, r"\[incident\.processed\] incident #1 HighErrorRate.*\[ \] ")
        # What the README promises, line by line.
        assert "rule: high-error-rate" in console
        assert re.search(r"✗ rollout: ", console), console
        assert re.search(r"→ rollback: kubernetes\.rollout_undo on kubernetes/default/prod/deployment/api: skipped \(",
                         console), console
        assert "alert_age" not in console  # startsAt is now: the rollback is judged on its evidence, not its age
        assert "[ ] Look for the error pattern" in console

        env = daemon_env(env)
        listed = cli("incidents", "list", "--config", "config.example.yaml", "--store", store, "--json", env=env)
        assert [i["alertname"] for i in json.loads(listed.stdout)] == ["HighErrorRate"], listed.stderr

        shown = json.loads(cli("incidents", "show", "1", "--config", "config.example.yaml", "--store", store,
                               "--json", env=env).stdout)
        evidence = {e["step"]: e for e in shown["evidence"]}
        assert evidence["rollout"]["status"] == "error"
        [rollback] = [d for d in shown["decisions"] if d["step"] == "rollback"]
        assert rollback["outcome"] == "skipped" and rollback["guard"] and rollback["reason"]
        assert shown["checklists"][0]["rule"] == "high-error-rate"
        assert any("incident #1 opened" in e["what"] for e in shown["timeline"])

        text = cli("incidents", "show", "1", "--config", "config.example.yaml", "--store", store, env=env).stdout
        for heading in ("evidence", "decisions", "checklist (high-error-rate)", "slack", "timeline"):
            assert f"\n{heading}" in text, text
        assert "rollback: kubernetes.rollout_undo" in text

        alerts = json.loads(cli("alerts", "list", "--config", "config.example.yaml", "--store", store, "--json",
                                env=env).stdout)
        assert [(a["alertname"], a["incident_id"]) for a in alerts] == [("HighErrorRate", 1)]
        actions = cli("actions", "list", "--config", "config.example.yaml", "--store", store, env=env).stdout
        assert "high-error-rate" in actions and "rollback" in actions

        closed = cli("incidents", "resolve", "1", "--reason", "tried the README", "--by", "tester",
                     "--config", "config.example.yaml", "--store", store, env=env)
        assert closed.returncode == 0, closed.stderr
        again = cli("incidents", "resolve", "1", "--reason", "twice", "--config", "config.example.yaml",
                    "--store", store, env=env)
        assert again.returncode == 2 and "already resolved" in again.stderr
        # The sinks hear of it as of any resolution.
        await wait_for(daemon, r"\[incident\.resolved\] incident #1 HighErrorRate")
        shown = json.loads(cli("incidents", "show", "1", "--config", "config.example.yaml", "--store", store,
                               "--json", env=env).stdout)
        assert shown["incident"]["status"] == "resolved"
        assert shown["incident"]["extra"]["resolved_by"] == "tester"
        assert any(e["what"] == "resolved by hand by tester: tried the README" for e in shown["timeline"])
