"""Alert storm: 10,000 alerts over 60 s in 100 Alertmanager groups, each group re-sent every group
interval with all its firing alerts so far (as Alertmanager does), against the daemon with the console sink
or (`--slack`) the Slack API fake at its per-channel rate.

    .venv/bin/python bench/storm.py [--target sqlite|postgres] [--alerts 10000] [--groups 100] [--seconds 60]
                                    [--slack [--slack-rate 1]] [--group-wait 0]

An incident is an alert group: the storm should make one incident per group, gather its evidence once (the
rule's collector is rendered per group, so identical calls are not shared across groups), keep one Slack
thread per group and stay inside Slack's rate. Reports incidents, members (every alert stored exactly once as
a member), collector runs (the daemon's own counter), Slack threads, calls (on average and for the group that
made most), 429 answers, time from a group's first delivery to its thread's first message, time until
everything is delivered against the bound (successful Slack calls ÷ the channel's rate) + 30 s, peak RSS and
queue depth over time. Writes bench/results/storm-<target>[-slack].json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
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
    group_wait: {group_wait}s
    collectors:
      - {{type: test.sleep, params: {{seconds: 0.05, label: "{{{{ labels.group }}}}"}}}}
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
                     statuses: dict[int, int], first_delivered: dict[str, float]) -> None:
    """Alert n starts firing at n/alerts * seconds in group n % groups; every group notifies each interval.
    `first_delivered`: the wall-clock time each group's first notification was accepted, by group key."""
    started = time.monotonic()
    url = f"http://127.0.0.1:{port}/webhooks/alertmanager"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def notify(group: int, firing: list[int]) -> None:
            payload = group_payload(group, firing)
            for _ in range(20):  # Alertmanager retries a failed notification
                async with session.post(url, json=payload) as resp:
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                    if resp.status == 200:
                        first_delivered.setdefault(payload["groupKey"], time.time())
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
        return await run_storm(args, workdir, slack)


def slack_numbers(slack: Any, rate: float, delivered_after: float, first_delivered: dict[str, float],
                  group_of_incident: dict[int, str]) -> dict[str, Any]:
    """What the Slack fake received: threads, successful calls per group (on average and the most any group
    made), 429s, per group the time from its first accepted delivery to its thread's parent message, and
    whether everything was delivered within (successful calls ÷ rate) + 30 s of the storm's start."""
    parents = slack.parents("#incidents")
    latency = []
    group_of_thread: dict[str, str | None] = {}
    for parent in parents:
        key = _group_of(parent.metadata, group_of_incident)
        group_of_thread[parent.ts] = key
        if key in first_delivered:
            latency.append(_posted_at(slack, parent) - first_delivered[key])
    latency.sort()
    ok = [c for c in slack.calls if c.error is None]
    per_group: dict[str | None, int] = {}
    for call in ok:
        # A parent by its metadata, a reply by its thread, an edit by the message it edits.
        thread_ts = call.args.get("thread_ts") or (call.args.get("ts") if call.method == "chat.update" else None)
        key = group_of_thread.get(str(thread_ts)) if thread_ts else _group_of(call.args.get("metadata"),
                                                                               group_of_incident)
        per_group[key] = per_group.get(key, 0) + 1
    bound = len(ok) / rate + 30
    # The groups that fired (fewer than --groups when there are fewer alerts).
    groups = len(set(group_of_incident.values()))
    return {
        "threads": len(parents),
        "messages_posted": len(slack.calls_to("chat.postMessage", ok=True)),
        "updates": len(slack.calls_to("chat.update", ok=True)),
        "rate_limited_429": len([c for c in slack.calls if c.status == 429]),
        "calls": len(slack.calls),
        "calls_ok": len(ok),
        "calls_per_group": round(len(ok) / max(groups, 1), 2),
        "calls_per_group_max": max((n for key, n in per_group.items() if key is not None), default=0),
        "calls_without_group": per_group.get(None, 0),
        "first_message_p50_s": round(statistics.median(latency), 2) if latency else None,
        "first_message_max_s": round(max(latency), 2) if latency else None,
        "delivered_bound_s": round(bound, 1),
        "delivered_within_bound": delivered_after <= bound,
    }


def _group_of(metadata: dict[str, Any] | None, group_of_incident: dict[int, str]) -> str | None:
    """The group of the incident a message's metadata names."""
    incident_id = ((metadata or {}).get("event_payload") or {}).get("incident_id")
    return group_of_incident.get(int(incident_id)) if incident_id is not None else None


def _posted_at(slack: Any, message: Any) -> float:
    """When the fake accepted a parent message: its successful chat.postMessage call."""
    for call in slack.calls:
        if call.method == "chat.postMessage" and call.status == 200 and not call.args.get("thread_ts") \
                and (call.args.get("metadata") or {}) == (message.metadata or {}):
            return float(call.time)
    return float("nan")


async def collector_runs(port: int) -> int:
    """The daemon's own count of collector executions (shared results are not runs)."""
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("responder_collector_runs_total{")))


async def run_storm(args: argparse.Namespace, workdir: Path, slack: Any) -> dict[str, Any]:
    schema = None
    if args.target == "sqlite":
        store_url = f"sqlite:///{workdir / f'storm-{uuid.uuid4().hex[:6]}.db'}"
    else:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        store_url = f"{PG}?schema={schema}"
    rules = workdir / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "storm.yaml").write_text(RULES.format(group_wait=args.group_wait))
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
            f" api_url: '{slack.api_url}', rate_per_channel: {args.slack_rate},"
            f" min_update_interval: {args.min_update_interval}, summary_interval: {args.summary_interval}}}}}\n"))
    port = free_port()
    proc = start_daemon(config, store_url, port)
    statuses: dict[int, int] = {}
    first_delivered: dict[str, float] = {}
    depth: list[tuple[float, int]] = []
    try:
        await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}/readyz", proc)
        messages = SinkMessages(proc)
        store = await open_store(store_url)
        try:
            started = time.monotonic()
            sending = asyncio.create_task(send_storm(port, args.alerts, args.groups, args.seconds, args.interval,
                                                     statuses, first_delivered))
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
            runs = await collector_runs(port)
            async with store.db.read() as conn:
                incidents = int(await conn.fetchval("SELECT COUNT(*) FROM incidents"))
                members = int(await conn.fetchval("SELECT COUNT(*) FROM incident_members"))
                distinct = int(await conn.fetchval(
                    "SELECT COUNT(*) FROM (SELECT DISTINCT fingerprint, starts_at FROM incident_members) m"))
                alerts_rows = int(await conn.fetchval("SELECT COUNT(*) FROM alerts"))
                unlinked = int(await conn.fetchval("SELECT COUNT(*) FROM alerts WHERE incident_id IS NULL"))
                failed = int(await conn.fetchval("SELECT COUNT(*) FROM jobs WHERE status <> 'done'"))
                group_of_incident = {int(r["id"]): r["group_key"]
                                     for r in await conn.fetch("SELECT id, group_key FROM incidents")}
        finally:
            await store.close()
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if schema:
            await asyncio.to_thread(drop_schema, schema)
    result = {
        "target": args.target, "alerts": args.alerts, "groups": args.groups, "seconds": args.seconds,
        "group_interval_s": args.interval, "group_wait_s": args.group_wait, "webhooks": statuses,
        "alert_rows": alerts_rows, "incidents": incidents, "members": members, "alerts_without_incident": unlinked,
        "collector_runs": runs, "jobs_not_done": failed, "sink_messages": messages.count,
        "peak_rss_mb": round(rss, 1), "all_delivered_after_s": round(delivered_after, 1),
        "max_queue_depth": max(d for _, d in depth), "queue_depth": depth,
        "one_incident_per_group": incidents == args.groups,
        "every_alert_one_member": members == distinct == args.alerts and unlinked == 0,
    }
    if slack is not None:
        result["slack"] = slack_numbers(slack, args.slack_rate, delivered_after, first_delivered, group_of_incident)
    return result


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
    parser.add_argument("--group-wait", type=float, default=0.0, help="the rule's group_wait, seconds")
    parser.add_argument("--min-update-interval", type=float, default=20.0, help="sinks.slack.min_update_interval")
    parser.add_argument("--summary-interval", type=float, default=60.0, help="sinks.slack.summary_interval")
    parser.add_argument("--output", type=Path, help="write the JSON result here instead of bench/results/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(storm(args, Path(tmp)))
    print_table(
        ["target", "alerts", "groups", "webhooks", "incidents", "members", "collector runs", "peak RSS MB",
         "max queue", "all delivered s", "one incident per group", "every alert one member"],
        [[result["target"], result["alerts"], result["groups"], sum(result["webhooks"].values()),
          result["incidents"], result["members"], result["collector_runs"], result["peak_rss_mb"],
          result["max_queue_depth"], result["all_delivered_after_s"], result["one_incident_per_group"],
          result["every_alert_one_member"]]],
    )
    print("queue depth (s, jobs):", " ".join(f"{t:g}:{d}" for t, d in result["queue_depth"][::5]))
    if "slack" in result:
        slack = result["slack"]
        print("slack:", slack)
        print(f"all delivered after {result['all_delivered_after_s']} s; bound ({slack['calls_ok']} calls ÷"
              f" {args.slack_rate:g}/s) + 30 s = {slack['delivered_bound_s']} s:"
              f" {'met' if slack['delivered_within_bound'] else 'missed'}; calls per group"
              f" {slack['calls_per_group']} on average, {slack['calls_per_group_max']} at most")
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=2))
        return
    path = write_result(f"storm-{args.target}{'-slack' if args.slack else ''}", result)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
