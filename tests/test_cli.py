"""The CLI around the daemon: what --help and check load, --version, completion, explain's conditions and
targets, replay --ignore-age, and every store-reading command's answer when the store cannot be opened."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO, daemon_env
from tests.support.services import free_port

HEAVY = ("kubernetes_asyncio", "asyncpg", "redis", "aiohttp", "slack_sdk", "matplotlib", "cryptography")

RULES = """
rules:
  - name: flush-cache
    match: ['alertname="CacheFull"']
    mitigations:
      - id: flush
        type: redis.delete_keys
        params: {target: cache, pattern: "cache:old:*"}
        when: ['labels.severity == "critical"']
      - id: flush_other
        type: redis.delete_keys
        params: {target: other, pattern: "cache:old:*"}
        requires_approval: true
        when: ["evidence.keys.payload.count > 10"]
"""


def responder(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "responder", *args], capture_output=True, text=True, cwd=cwd,
                          env=daemon_env({"COLUMNS": "250"}), timeout=120)


def loaded_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                            env=daemon_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout.strip().replace("'", '"'))
    return loaded


def test_help_loads_no_heavy_library_and_not_even_pydantic() -> None:
    assert loaded_after("from responder.cli import build_parser; build_parser()") == []
    probe = ("import sys\nfrom responder.cli import build_parser\nbuild_parser()\n"
             "print('pydantic' in sys.modules, 'rich' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                            env=daemon_env(), timeout=60)
    assert result.stdout.split() == ["False", "False"]


def test_check_loads_no_client_library() -> None:
    code = ("from pathlib import Path\nfrom responder.checks import check_all\n"
            "assert check_all(Path('config.example.yaml')).rule_count > 0")
    assert loaded_after(code) == []


def test_the_daemon_loads_client_libraries_for_its_target_kinds_only() -> None:
    code = ("from responder.config import load_config\nfrom responder.targets import preload_clients\n"
            "preload_clients(load_config(None, {'targets': {'redis': {'cache': {'url': 'redis://127.0.0.1'}}}}).targets)")
    loaded = loaded_after(code)
    assert "redis" in loaded
    assert not {"kubernetes_asyncio", "asyncpg", "aiohttp", "slack_sdk", "matplotlib"} & set(loaded)


def test_version_and_completion() -> None:
    version = responder("--version")
    assert version.returncode == 0 and version.stdout.startswith("responder 0.")
    for shell in ("bash", "zsh"):
        script = responder("completion", shell)
        assert script.returncode == 0 and "responder" in script.stdout and "_ARGCOMPLETE" in script.stdout
    # What the shell code does on TAB: call responder with the line so far; the answer comes on file descriptor 8.
    env = daemon_env({"_ARGCOMPLETE": "1", "COMP_LINE": "responder incidents ", "COMP_POINT": "20",
                      "_ARGCOMPLETE_IFS": " "})
    answer = subprocess.run(["bash", "-c", f"{sys.executable} -m responder 8>&1 9>/dev/null"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert set(answer.stdout.split()) >= {"list", "show", "resolve"}, answer.stdout + answer.stderr


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "cache.yaml").write_text(RULES)
    config = tmp_path / "config.yaml"
    config.write_text(f"rules: {{dirs: [rules]}}\nstore: {{url: 'sqlite:///{tmp_path}/r.db'}}\n"
                      "targets: {redis: {cache: {url: 'redis://127.0.0.1:6379/15'}}}\n")
    return config, tmp_path


def alert_file(path: Path, starts_at: str) -> Path:
    path.write_text(json.dumps({
        "version": "4", "status": "firing", "receiver": "r", "groupKey": "{}:{}",
        "alerts": [{"status": "firing", "labels": {"alertname": "CacheFull", "severity": "critical"},
                    "annotations": {}, "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z",
                    "fingerprint": "f00d"}]}))
    return path


def test_explain_shows_conditions_now_approvals_and_targets(setup: tuple[Path, Path]) -> None:
    config, tmp = setup
    result = responder("explain", str(alert_file(tmp / "a.json", "2030-01-01T00:00:00Z")), "--config", str(config))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "mitigate flush: redis.delete_keys" in out and "target redis.cache" in out
    assert "when labels.severity == \"critical\": true now" in out
    assert "target redis.other is not configured" in out
    assert "needs approval in Slack before it runs" in out
    assert "when evidence.keys.payload.count > 10: depends on the evidence of step 'keys'" in out


def test_replay_ignore_age_judges_an_old_alert_as_new(setup: tuple[Path, Path]) -> None:
    config, tmp = setup
    old = alert_file(tmp / "old.json", "2020-01-01T00:00:00Z")

    def flush_decision(*extra: str) -> dict[str, str]:
        result = responder("replay", str(old), "--config", str(config), "--json", *extra)
        assert result.returncode == 0, result.stderr
        [bundle] = json.loads(result.stdout)
        decision: dict[str, str] = next(a for a in bundle["actions"] if a["step"] == "flush")
        return decision

    assert flush_decision()["guard"] == "alert_age"
    decision = flush_decision("--ignore-age")
    assert decision["outcome"] == "dry-run" and decision["guard"] in (None, ""), decision


STORE_COMMANDS = [
    ("incidents", "list"), ("incidents", "show", "1"), ("incidents", "resolve", "1", "--reason", "r"),
    ("alerts", "list"), ("alerts", "export", "1"), ("actions", "list"), ("clicks", "list"),
    ("explain", "ALERT"), ("replay", "--alert", "1"),
]


@pytest.mark.parametrize("command", STORE_COMMANDS, ids=" ".join)
def test_an_unreachable_store_is_one_clear_error_with_the_url_masked(setup: tuple[Path, Path],
                                                                      command: tuple[str, ...]) -> None:
    config, tmp = setup
    # Nothing listens on a port just freed: the connection is refused at once.
    url = f"postgresql://responder:hunter2-secret@127.0.0.1:{free_port()}/alerts"
    config.write_text(config.read_text().replace(f"sqlite:///{tmp}/r.db", url))
    alert = str(alert_file(tmp / "a.json", "2030-01-01T00:00:00Z"))
    result = responder(*(alert if arg == "ALERT" else arg for arg in command), "--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {config.resolve()}:2: store.url: cannot open the store"
                           f" postgresql://responder:[REDACTED]@127.0.0.1:"), line
    assert "refused" in line.lower() or "connect" in line.lower(), line
    assert "hunter2" not in result.stdout + result.stderr


def test_an_unopenable_store_given_with_store_is_named_as_such(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    result = responder("alerts", "list", "--store", f"sqlite:///{blocked}/r.db")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: --store: store.url: cannot open the store sqlite:///{blocked}/r.db:"), \
        result.stderr
