"""The storm benchmark, reduced, as a test: an Alertmanager storm of growing groups re-sent every interval,
through a real daemon process to the Slack fake at its per-channel rate, is one incident, one collector run
and one thread per group of at most four calls, every alert stored once as a member, no 429 answer, and all
delivered within (calls ÷ rate) + 30 s."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import REPO, env_with_repo

pytestmark = pytest.mark.slow


def test_reduced_storm_is_one_incident_one_run_and_one_thread_per_group(tmp_path: Path) -> None:
    groups = 5
    result = subprocess.run(
        [sys.executable, "bench/storm.py", "--slack", "--alerts", "300", "--groups", str(groups), "--seconds", "6",
         "--interval", "1", "--slack-rate", "4", "--workers", "4", "--timeout", "120",
         "--min-update-interval", "10", "--summary-interval", "10",
         "--output", str(tmp_path / "storm.json")],
        cwd=REPO, env=env_with_repo(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    storm = json.loads((tmp_path / "storm.json").read_text())
    assert storm["incidents"] == groups and storm["one_incident_per_group"]
    assert storm["every_alert_one_member"] and storm["jobs_not_done"] == 0
    assert storm["collector_runs"] <= groups
    slack = storm["slack"]
    assert slack["threads"] == groups
    assert slack["rate_limited_429"] == 0
    assert slack["calls_per_group_max"] <= 4 and slack["calls_without_group"] == 0
    assert slack["delivered_within_bound"]
