"""Alert storm: 10,000 alerts over 60 s in 100 Alertmanager groups, each group re-sent every group
interval with all its firing alerts so far (as Alertmanager does), against the daemon with the console sink.

    .venv/bin/python bench/storm.py [--target sqlite|postgres] [--alerts 10000] [--groups 100] [--seconds 60]

Reports peak RSS, queue depth over time, time until every bundle is delivered, the number of sink
messages, and checks that every alert has exactly one incident. Writes bench/results/storm-<target>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, env_with_repo, free_port, print_table, wait_ready, write_result
from bench.ingest import PG, drop_schema
from responder.store import open_store

SLACK_TOKEN = "xoxb-storm-bench"
RULES = """
rules:
  - name: storm
    match: ['alertname="StormAlert"']
    collectors:
      - {type: test.sleep, params: {seconds: 0.05}}
"""


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class SinkMessages:
    """Counts the console sink's blocks as the daemon prints them."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.count = 0
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("[incident."):
                self.count += 1


def group_payload(group: int, firing: list[int]) -> dict[str, Any]:
    return {
        "version": "4", "status": "firing", "receiver": "storm", "groupKey": f"{{}}:{{group=\"g{group}\"}}",
        "groupLabels": {"group": f"g{group}"},
        "alerts": [{"status": "firing", "startsAt": "2026-11-23T08:00:00Z", "fingerprint": f"a{n}",
                    "labels": {"alertname": "StormAlert", "group": f"g{group}", "pod": f"pod-{n}"},
                    "annotations": {"summary": f"storm alert {n}"}} for n in firing],
    }


async def send_storm(port: int, alerts: int, groups: int, seconds: float, interval: float,
                     statuses: dict[int, int]) -> None:
    """Alert n starts firing at n/alerts * seconds in group n % groups; every group notifies each interval."""
    started = time.monotonic()
    url = f"http://127.0.0.1:{port}/webhooks/alertmanager"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def notify(group: int, firing: list[int]) -> None:
            for _ in range(20):  # Alertmanager retries a failed notification
                async with session.post(url, json=group_payload(group, firing)) as resp:
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                    if resp.status == 200:
                        return
                await asyncio.sleep(1)

        tick = 0
        sends: list[asyncio.Task[None]] = []
        while True:
            elapsed = time.monotonic() - started
            due = min(alerts, int(alerts * elapsed / seconds))
            for group in range(groups):
                # Groups are spread over the interval, as their first alerts arrived at different times.
                firing = [n for n in range(group, due, groups)]
                if firing:
                    sends.append(asyncio.create_task(notify(group, firing)))
                await asyncio.sleep(interval / groups)
            tick += 1
            if due >= alerts:
                break
        await asyncio.gather(*sends)


def start_daemon(config: Path, store_url: str, port: int) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "responder", "serve", "--config", str(config), "--store", store_url, "--listen",
            f"127.0.0.1:{port}"]
    env = env_with_repo({"PYTHONUNBUFFERED": "1", "STORM_SLACK_TOKEN": SLACK_TOKEN})
    return subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


async def storm(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    if not args.slack:
        return await run_storm(args, workdir, None)
    from tests.fakes.slack_api import FakeSlack  # the Slack Web API fake the tests use

    async with FakeSlack(SLACK_TOKEN) as slack:
        slack.rate_limit(args.slack_rate, retry_after=1.0)
        result = await run_storm(args, workdir, slack)
        posted = slack.calls_to("chat.postMessage", ok=True)
        result["slack"] = {
            "messages_posted": len(posted),
            "threads": len(slack.parents("#incidents")),
            "updates": len(slack.calls_to("chat.update", ok=True)),
            "rate_limited_429": len([c for c in slack.calls if c.status == 429]),
            "calls": len(slack.calls),
        }
        return result


async def run_storm(args: argparse.Namespace, workdir: Path, slack: Any) -> dict[str, Any]:
    schema = None
    if args.target == "sqlite":
        store_url = f"sqlite:///{workdir / f'storm-{uuid.uuid4().hex[:6]}.db'}"
    else:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        store_url = f"{PG}?schema={schema}"
    rules = workdir / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "storm.yaml").write_text(RULES)
    config = workdir / "storm.yaml"
    config.write_text(
        "intakes: {alertmanager: {auth: {unauthenticated: loopback}}}\n"
        "logging: {level: warning}\n"
        f"rules: {{dirs: [{rules}]}}\n"
        "plugins: [tests.support.plugins]\n"
        f"pipeline: {{workers: {args.workers}}}\n"
    )
    if slack is not None:
        config.write_text(config.read_text() + (
            "sinks: {console: {enabled: false}, slack: {token: {env: STORM_SLACK_TOKEN}, default_channel: '#incidents',"
            f" api_url: '{slack.api_url}', rate_per_channel: {args.slack_rate}}}}}\n"))
    port = free_port()
    proc = start_daemon(config, store_url, port)
    statuses: dict[int, int] = {}
    depth: list[tuple[float, int]] = []
    try:
        await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}/readyz", proc)
        messages = SinkMessages(proc)
        store = await open_store(store_url)
        try:
            started = time.monotonic()
            sending = asyncio.create_task(send_storm(port, args.alerts, args.groups, args.seconds, args.interval,
                                                     statuses))
            while True:
                queued = await store.queue.depth()
                depth.append((round(time.monotonic() - started, 1), queued))
                if sending.done() and queued == 0:
                    break
                if time.monotonic() - started > args.seconds + args.timeout:
                    raise TimeoutError(f"{queued} jobs still queued after {args.seconds + args.timeout}s")
                await asyncio.sleep(1)
            await sending
            delivered_after = time.monotonic() - started
            await asyncio.sleep(0.5)  # the last blocks on their way through the pipe
            async with store.db.read() as conn:
                incidents = int(await conn.fetchval("SELECT COUNT(*) FROM incidents"))
                distinct = int(await conn.fetchval("SELECT COUNT(DISTINCT fingerprint) FROM incidents"))
                alerts_rows = int(await conn.fetchval("SELECT COUNT(*) FROM alerts"))
                unlinked = int(await conn.fetchval("SELECT COUNT(*) FROM alerts WHERE incident_id IS NULL"))
                failed = int(await conn.fetchval("SELECT COUNT(*) FROM jobs WHERE status <> 'done'"))
        finally:
            await store.close()
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if schema:
            await asyncio.to_thread(drop_schema, schema)
    return {
        "target": args.target, "alerts": args.alerts, "groups": args.groups, "seconds": args.seconds,
        "group_interval_s": args.interval, "webhooks": statuses, "alert_rows": alerts_rows,
        "incidents": incidents, "incidents_distinct": distinct, "alerts_without_incident": unlinked,
        "jobs_not_done": failed, "sink_messages": messages.count, "peak_rss_mb": round(rss, 1),
        "all_delivered_after_s": round(delivered_after, 1),
        "max_queue_depth": max(d for _, d in depth), "queue_depth": depth,
        "every_alert_has_one_incident": incidents == distinct == args.alerts and unlinked == 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="sqlite", choices=["sqlite", "postgres"])
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--interval", type=float, default=5, help="Alertmanager's group_interval")
    parser.add_argument("--workers", type=int, default=16, help="pipeline.workers")
    parser.add_argument("--timeout", type=float, default=300, help="give up this long after the storm")
    parser.add_argument("--slack", action="store_true", help="deliver to the Slack fake instead of the console")
    parser.add_argument("--slack-rate", type=float, default=1.0, help="Slack messages per second per channel")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(storm(args, Path(tmp)))
    print_table(
        ["target", "alerts", "webhooks", "incidents", "sink msgs", "peak RSS MB", "max queue", "all delivered s",
         "one incident per alert"],
        [[result["target"], result["alerts"], sum(result["webhooks"].values()), result["incidents"],
          result["sink_messages"], result["peak_rss_mb"], result["max_queue_depth"],
          result["all_delivered_after_s"], result["every_alert_has_one_incident"]]],
    )
    print("queue depth (s, jobs):", " ".join(f"{t:g}:{d}" for t, d in result["queue_depth"][::5]))
    if "slack" in result:
        print("slack:", result["slack"])
    path = write_result(f"storm-{args.target}{'-slack' if args.slack else ''}", result)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
