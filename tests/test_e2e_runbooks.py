"""End to end with the shipped rules and real binaries: alerts travel through a real Alertmanager (bearer auth)
to the daemon (a subprocess), which gathers evidence from a real Prometheus, PostgreSQL and Redis and the
Kubernetes API fake, decides the rule's mitigations and posts one Slack thread per incident (Slack fake).

1. HighErrorRate: a real Prometheus scrapes a test application and fires; the fresh deploy is rolled back in
   dry-run (nothing written), then enforced (one rollback PATCH); the error rate drops and the thread's parent
   turns Resolved.
2. database_connections_critical: sessions idle in transaction (one of them blocking another) are terminated.
3. CeleryQueueBackup: a backed-up queue in Redis scales the workers up, bounded.

Each test prints the time from Alertmanager's delivery (the payload's `received_at` in the store) to the first
Slack message and to the complete thread (its checklist, posted last); run with -s to see them.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Self, TypeVar

import asyncpg
import pytest
import redis.asyncio as aioredis
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from responder.store import Store, open_store
from tests.fakes.kube_api import FakeKubeAPI, container_status
from tests.fakes.slack_api import FakeSlack, Message
from tests.support.alertmanager import Alertmanager
from tests.support.processes import REPO, ManagedProcess, responder_daemon, wait_http
from tests.support.prometheus import Prometheus
from tests.support.services import PG_BASE, free_port, require, unique

pytestmark = pytest.mark.slow

AM_TOKEN = "e2e-alertmanager-token"
SLACK_TOKEN = "xoxb-e2e-token"
CHANNEL = "#incidents"
T = TypeVar("T")


# --- the pieces of the chain ----------------------------------------------------------------------------------


class ErrorRateApp:
    """A tiny API that counts requests by status (the test sets which share of them fail) and serves its
    circuit breakers' state on the admin path the rule checks."""

    def __init__(self) -> None:
        self.error_share = 0.0
        self.counts = {"200": 0, "500": 0}

    async def metrics(self, request: web.Request) -> web.Response:
        lines = ["# TYPE http_requests_total counter"]
        lines += [f'http_requests_total{{status="{s}"}} {n}' for s, n in self.counts.items()]
        return web.Response(text="\n".join(lines) + "\n")

    async def circuit_breakers(self, request: web.Request) -> web.Response:
        return web.json_response({"payments": "closed", "search": "closed"})

    async def traffic(self) -> None:
        while True:
            failed = round(100 * self.error_share)
            self.counts["500"] += failed
            self.counts["200"] += 100 - failed
            await asyncio.sleep(0.1)


@pytest.fixture
async def app() -> AsyncIterator[tuple[ErrorRateApp, str]]:
    service = ErrorRateApp()
    web_app = web.Application()
    web_app.router.add_get("/metrics", service.metrics)
    web_app.router.add_get("/admin/circuit-breakers", service.circuit_breakers)
    server = TestServer(web_app, host="127.0.0.1")
    await server.start_server()
    task = asyncio.create_task(service.traffic())
    try:
        yield service, f"127.0.0.1:{server.port}"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.close()


ALERT_RULES = {"groups": [{"name": "api", "interval": "1s", "rules": [{
    "alert": "HighErrorRate",
    "expr": 'sum by (namespace, job) (rate(http_requests_total{status=~"5.."}[5s]))'
            ' / sum by (namespace, job) (rate(http_requests_total[5s])) > 0.05',
    "for": "1s",
    "labels": {"severity": "critical", "deployment": "api"},
    "annotations": {"summary": "5xx above 5%"},
}]}]}


class AlertingPrometheus(Prometheus):
    """The real Prometheus, scraping the app every second (job `api`, namespace `shop`), evaluating
    HighErrorRate every second and sending it to Alertmanager."""

    def __init__(self, workdir: Path, scrape: str, alertmanager: str) -> None:
        super().__init__(workdir)
        self.scrape_target, self.alertmanager = scrape, alertmanager

    def configuration(self) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(self.workdir / "alerts.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [self.alertmanager]}]}]},
            "scrape_configs": [{"job_name": "api", "static_configs": [
                {"targets": [self.scrape_target], "labels": {"namespace": "shop"}}]}],
        }

    async def __aenter__(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "alerts.yml").write_text(yaml.safe_dump(ALERT_RULES))
        return await super().__aenter__()


def minutes_ago(minutes: float) -> str:
    moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=minutes)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def seed_workload(kube: FakeKubeAPI, name: str, *, replicas: int, image: str, previous_image: str,
                  deployed_minutes_ago: float, log: str) -> None:
    """shop/<name>: the current revision 2 (`image`) deployed some minutes ago over revision 1, its pods
    running and logging `log`."""
    deployment = kube.add_deployment("shop", name, replicas=replicas, revision=2, image=image)
    kube.add_replicaset(deployment, 1, previous_image, "old111", created="2024-05-01T10:00:00Z")
    kube.add_replicaset(deployment, 2, image, "new222", created=minutes_ago(deployed_minutes_ago),
                        replicas=replicas)
    for index in range(replicas):
        pod = f"{name}-new222-{index}"
        kube.add_pod("shop", pod, labels={"app": name}, containers=[container_status(name, image)])
        kube.logs[("shop", pod, name, False)] = log


# --- the daemon and what reaches Slack --------------------------------------------------------------------------


def daemon_config(tmp: Path, name: str, *, store_url: str, rules_dir: Path, mode: str, kube: FakeKubeAPI,
                  slack: FakeSlack, targets: dict[str, Any]) -> Path:
    config = {
        "store": {"url": store_url, "poll_interval": "0.1s"},
        "rules": {"dirs": [str(rules_dir)]},
        "intakes": {"alertmanager": {"auth": {"bearer_token": {"env": "E2E_AM_TOKEN"},
                                              "unauthenticated": "reject"}}},
        "targets": {"kubernetes": {"default": kube.target()}, **targets},
        "sinks": {"slack": {"token": {"env": "E2E_SLACK_TOKEN"}, "api_url": slack.api_url,
                            "default_channel": CHANNEL, "rate_per_channel": 20, "timeout": "5s"}},
        "mitigations": {"mode": mode},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@asynccontextmanager
async def running_daemon(config: Path, port: int, log_path: Path, store_url: str,
                         env: dict[str, str] | None = None) -> AsyncIterator[tuple[ManagedProcess, Store]]:
    """The daemon as a subprocess, and the test's own connection to its store."""
    daemon = responder_daemon(config, port, log_path, extra_env={
        "E2E_AM_TOKEN": AM_TOKEN, "E2E_SLACK_TOKEN": SLACK_TOKEN, **(env or {})}).start()
    try:
        await wait_http(f"http://127.0.0.1:{port}/readyz", timeout=30, proc=daemon)
        store = await open_store(store_url)
        try:
            yield daemon, store
        finally:
            await store.close()
    finally:
        daemon.stop()


async def until(check: Callable[[], Awaitable[T | None]], timeout: float, what: str,
                daemon: ManagedProcess | None = None) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := await check()) is not None:
            return value
        await asyncio.sleep(0.2)
    tail = daemon.output()[-4000:] if daemon is not None else ""
    raise AssertionError(f"not within {timeout}s: {what}\n{tail}")


def shown(message: Message) -> str:
    """What a reader of the message sees: its text and its blocks."""
    return message.text + "\n" + json.dumps(message.blocks, ensure_ascii=False)


def thread_text(thread: list[Message]) -> str:
    return "\n".join(shown(m) for m in thread)


def reply(thread: list[Message], pattern: str) -> Message:
    """The one reply whose text matches `pattern`."""
    found = [m for m in thread[1:] if re.fullmatch(pattern, m.text)]
    assert len(found) == 1, (pattern, thread_text(thread))
    return found[0]


def action_output(decision: Message) -> Any:
    """The action's output, shown as JSON in the decision reply's code block."""
    return json.loads(decision.blocks[1]["text"]["text"].strip("`\n"))


async def complete_thread(slack: FakeSlack, store: Store, alertname: str, rule: str, label: str,
                          daemon: ManagedProcess, timeout: float = 40) -> list[Message]:
    """Wait for the incident's one thread to be complete (its checklist, the last reply, is posted and no
    Slack job is left), then print how long Alertmanager's delivery took to reach Slack."""

    async def complete() -> list[Message] | None:
        parents = [m for m in slack.parents(CHANNEL) if f": {alertname}" in m.text]
        if not parents:
            return None
        thread = slack.thread(CHANNEL, parents[0].ts)
        if not any(m.text == f"Checklist for {rule}" for m in thread[1:]):
            return None
        jobs = [j for q in ("sink:slack", "sink:slack:outbox") for j in await store.queue.rows(queue=q)]
        return thread if all(j["status"] == "done" for j in jobs) else None

    thread = await until(complete, timeout, f"the {alertname} thread is complete", daemon)
    assert len(slack.parents(CHANNEL)) == 1, [m.text for m in slack.parents(CHANNEL)]
    delivered = min(float(a["received_at"]) for a in await store.list_alerts() if a["alertname"] == alertname)
    posted = [c.time for c in slack.calls if c.error is None
              and c.method in ("chat.postMessage", "chat.update", "files.completeUploadExternal")]
    print(f"\n[e2e timing] {label}: Alertmanager delivery -> first Slack message {posted[0] - delivered:.2f}s,"
          f" -> complete thread ({len(thread)} messages) {posted[-1] - delivered:.2f}s")
    print("[e2e thread] " + " | ".join(m.text[:60] for m in thread))
    return thread


# --- 1. HighErrorRate: Prometheus -> Alertmanager -> rollback ----------------------------------------------------


async def error_rate_cycle(tmp: Path, name: str, mode: str, service: ErrorRateApp, kube: FakeKubeAPI,
                           prometheus: str, app_url: str, port: int) -> tuple[list[Message], list[Any]]:
    """Raise the error rate until the thread is complete, then lower it until the parent says Resolved.
    Returns the final thread and the stored action decisions."""
    async with FakeSlack(SLACK_TOKEN) as slack:
        store_url = f"sqlite:///{tmp / (name + '.db')}"
        config = daemon_config(tmp, name, store_url=store_url, rules_dir=REPO / "rules", mode=mode, kube=kube,
                               slack=slack, targets={"prometheus": {"main": {"url": prometheus}},
                                                     "http": {"app": {"url": app_url}}})
        async with running_daemon(config, port, tmp / f"{name}.log", store_url) as (daemon, store):
            service.error_share = 0.3
            raised = time.time()
            thread = await complete_thread(slack, store, "HighErrorRate", "high-error-rate", f"HighErrorRate {mode}",
                                           daemon, timeout=45)
            delivered = min(float(a["received_at"]) for a in await store.list_alerts())
            print(f"[e2e timing] HighErrorRate {mode}: error rate raised -> Alertmanager delivery "
                  f"{delivered - raised:.2f}s")
            [incident] = await store.list_incidents()
            actions = list(await store.actions(incident.id))

            service.error_share = 0.0
            lowered = time.time()

            async def parent_resolved() -> list[Message] | None:
                current = slack.thread(CHANNEL, thread[0].ts)
                return current if current[0].blocks[0]["text"]["text"].startswith("Resolved") else None

            resolved = await until(parent_resolved, 30, "the thread's parent turns Resolved", daemon)
            print(f"[e2e timing] HighErrorRate {mode}: error rate lowered -> parent Resolved "
                  f"{time.time() - lowered:.2f}s")
            updates = [c for c in slack.calls_to("chat.update", ok=True) if c.args.get("ts") == thread[0].ts
                       and str(c.args["text"]).startswith("Resolved: HighErrorRate")]
            assert len(updates) == 1
            assert "resolved" in json.dumps(resolved[0].blocks)
            assert (await store.list_incidents())[0].status.value == "resolved"
            return resolved, actions


async def test_high_error_rate_from_prometheus_to_rollback_then_resolved(
        tmp_path: Path, app: tuple[ErrorRateApp, str]) -> None:
    service, scrape = app
    port = free_port()
    app_url = f"http://{scrape}"
    async with FakeKubeAPI() as kube:
        seed_workload(kube, "api", replicas=2, image="api:2.0", previous_image="api:1.9", deployed_minutes_ago=5,
                      log="INFO start\nERROR KeyError: 'bill_id' in /api/bills\nINFO ok\n")
        async with Alertmanager(tmp_path / "am", f"http://127.0.0.1:{port}/webhooks/alertmanager",
                                bearer_token=AM_TOKEN, group_wait="1s", group_interval="1s") as am, \
                AlertingPrometheus(tmp_path / "prom", scrape, f"127.0.0.1:{am.port}") as prom:
            thread, actions = await error_rate_cycle(tmp_path, "dry", "dry-run", service, kube, prom.url, app_url,
                                                     port)
            decided = {a["step"]: a["outcome"] for a in actions}
            assert decided == {"rollback": "dry-run", "restart": "skipped"}, decided
            assert kube.writes() == []
            seen = thread_text(thread)
            # The bundle: Prometheus' ratio and its chart, the pods, the ERROR line, the rollout history with
            # both images, the circuit breakers, the decisions and the checklist.
            for evidence in ("ERROR KeyError", "api:1.9", "api:2.0", "api-new222-0", "payments",
                             "kubernetes.rollout_undo on kubernetes/default/shop/deployment/api: dry-run"):
                assert evidence in seen, evidence
            assert not any(m.text.endswith("(error)") for m in thread), [m.text for m in thread]
            assert any(f["name"].endswith(".png") for m in thread for f in m.files)

            thread, actions = await error_rate_cycle(tmp_path, "enforce", "enforce", service, kube, prom.url,
                                                     app_url, port)
            decided = {a["step"]: a["outcome"] for a in actions}
            assert decided == {"rollback": "executed", "restart": "skipped"}, decided
            assert "kubernetes.rollout_undo on kubernetes/default/shop/deployment/api: executed" in thread_text(thread)
            [patch] = kube.writes()
            assert (patch.method, patch.path) == ("PATCH", "/apis/apps/v1/namespaces/shop/deployments/api")
            template = kube.deployments[("shop", "api")]["spec"]["template"]
            assert template["spec"]["containers"][0]["image"] == "api:1.9"


# --- 2. database_connections_critical: idle in transaction sessions and a blocking chain -------------------------


def short_database_rule(directory: Path, role: str) -> Path:
    """The shipped database-connections rule with test-sized thresholds: sessions idle in transaction for
    over 2 seconds (10 minutes in the library; the rule's durations are not label-driven), and only the
    test's own role, so the shared server's other sessions are never touched."""
    shipped = yaml.safe_load((REPO / "rules" / "30-database.yaml").read_text())
    [rule] = [r for r in shipped["rules"] if r["name"] == "database-connections"]
    for step in rule["collectors"]:
        if step["type"] == "postgres.idle_in_transaction":
            step["params"]["min_duration"] = "1s"
    for step in rule["mitigations"]:
        step["params"].update({"idle_for": "2s", "user": role})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "30-database.yaml").write_text(yaml.safe_dump({"rules": [rule]}))
    return directory


@pytest.fixture
async def pg_role() -> AsyncIterator[tuple[str, str]]:
    """An ordinary login role and a schema with one table it may update; both dropped afterwards."""
    try:
        admin = await asyncpg.connect(PG_BASE, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        require("PostgreSQL", str(exc))
    role, schema = unique("e2e_app"), unique("e2e")
    await admin.execute(f'CREATE ROLE "{role}" LOGIN; CREATE SCHEMA "{schema}";'
                        f'CREATE TABLE "{schema}".accounts (id int PRIMARY KEY, balance int NOT NULL);'
                        f'INSERT INTO "{schema}".accounts VALUES (1, 100);'
                        f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}";'
                        f'GRANT SELECT, UPDATE ON "{schema}".accounts TO "{role}"')
    try:
        yield role, schema
    finally:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
        await asyncio.sleep(0.2)
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE; DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def test_idle_in_transaction_blockers_are_terminated(tmp_path: Path, pg_url: str,
                                                           pg_role: tuple[str, str]) -> None:
    role, schema = pg_role
    port = free_port()

    async def session(application: str) -> asyncpg.Connection:
        return await asyncpg.connect(PG_BASE, user=role, timeout=5,
                                     server_settings={"application_name": application})

    holder, idler, waiter = await session("billing-holder"), await session("billing-idle"), await session("billing")
    try:
        await holder.execute(f'BEGIN; UPDATE "{schema}".accounts SET balance = balance - 1 WHERE id = 1')
        await idler.execute("BEGIN; SELECT 1")
        waiting = asyncio.create_task(
            waiter.execute(f'UPDATE "{schema}".accounts SET balance = balance + 1 WHERE id = 1'))
        pids = {name: await conn.fetchval("SELECT pg_backend_pid()")
                for name, conn in (("holder", holder), ("idler", idler))}
        waiter_pid = waiter.get_server_pid()
        await asyncio.sleep(2.5)  # older than the rule's (shortened) idle_for
        assert not waiting.done()

        async with FakeKubeAPI() as kube, FakeSlack(SLACK_TOKEN) as slack:
            seed_workload(kube, "api", replicas=1, image="api:2.0", previous_image="api:1.9",
                          deployed_minutes_ago=300, log="INFO ok\n")
            config = daemon_config(tmp_path, "db", store_url=pg_url, mode="enforce", kube=kube, slack=slack,
                                   rules_dir=short_database_rule(tmp_path / "rules", role),
                                   targets={"postgres": {"main": {"dsn": {"env": "E2E_PG_DSN"}}}})
            async with Alertmanager(tmp_path / "am", f"http://127.0.0.1:{port}/webhooks/alertmanager",
                                    bearer_token=AM_TOKEN, group_wait="1s", group_interval="1s") as am, \
                    running_daemon(config, port, tmp_path / "db.log", pg_url, {"E2E_PG_DSN": PG_BASE}) as (daemon,
                                                                                                          store):
                am.amtool_alert({"alertname": "database_connections_critical", "severity": "critical",
                                 "namespace": "shop", "deployment": "api"},
                                annotations={"summary": "connections near max_connections"})
                thread = await complete_thread(slack, store, "database_connections_critical", "database-connections",
                                               "database_connections_critical", daemon)
                # The server is shared with other tests: other sessions may show up, ours must.
                blocking = reply(thread, r"✓ \d+ blocked session\(s\) behind \d+ root blocker\(s\) \(ok\)")
                tree = blocking.blocks[1]["text"]["text"]
                assert re.search(rf"^pid {pids['holder']} \[idle in transaction.*\n  └─ pid {waiter_pid} \[active",
                                 tree, re.M), tree
                idle = reply(thread, r"✓ \d+ session\(s\) idle in transaction .*")
                assert "billing-holder" in shown(idle) and "billing-idle" in shown(idle)
                decision = reply(thread, "postgres.terminate_idle on postgres/main: executed")
                output = action_output(decision)
                assert output["touched"] == 2
                assert {s["pid"] for s in output["sessions"]} == set(pids.values())
                assert "postgres.terminate_idle on postgres/main: skipped" in thread_text(thread)

        # The terminated sessions are gone, and the blocked update went through.
        await asyncio.wait_for(waiting, 10)
        admin = await asyncpg.connect(PG_BASE, timeout=5)
        try:
            still = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[])",
                                      list(pids.values()))
            balance = await admin.fetchval(f'SELECT balance FROM "{schema}".accounts WHERE id = 1')
        finally:
            await admin.close()
        assert still == [] and balance == 101
    finally:
        for conn in (holder, idler, waiter):
            conn.terminate()


# --- 3. CeleryQueueBackup: a backlog in Redis scales the workers ------------------------------------------------


async def test_celery_queue_backup_scales_workers_within_bounds(tmp_path: Path, redis_prefix: str,
                                                                redis_url: str) -> None:
    queue = f"{redis_prefix}celery"
    client = aioredis.from_url(redis_url)
    try:
        await client.rpush(queue, *[json.dumps({"task": "send_invoice", "id": i}) for i in range(250)])
    finally:
        await client.aclose()
    port = free_port()
    async with FakeKubeAPI() as kube, FakeSlack(SLACK_TOKEN) as slack:
        seed_workload(kube, "worker", replicas=3, image="worker:5.1", previous_image="worker:5.0",
                      deployed_minutes_ago=600, log="INFO Task send_invoice succeeded in 2.1s\n")
        store_url = f"sqlite:///{tmp_path / 'queue.db'}"
        config = daemon_config(tmp_path, "queue", store_url=store_url, rules_dir=REPO / "rules", mode="enforce",
                               kube=kube, slack=slack,
                               targets={"redis": {"broker": {"url": {"env": "E2E_REDIS_URL"}}}})
        async with Alertmanager(tmp_path / "am", f"http://127.0.0.1:{port}/webhooks/alertmanager",
                                bearer_token=AM_TOKEN, group_wait="1s", group_interval="1s") as am, \
                running_daemon(config, port, tmp_path / "queue.log", store_url,
                               {"E2E_REDIS_URL": redis_url}) as (daemon, store):
            am.amtool_alert({"alertname": "CeleryQueueBackup", "severity": "warning", "namespace": "shop",
                             "deployment": "worker", "queue": queue},
                            annotations={"summary": "Celery queue backing up"})
            thread = await complete_thread(slack, store, "CeleryQueueBackup", "celery-queue-backup",
                                           "CeleryQueueBackup", daemon)
            backlog = reply(thread, r"✓ 250 item\(s\) queued across 1 queue\(s\), longest 250 \(ok\)")
            assert queue in shown(backlog)
            decision = reply(thread, "kubernetes.scale on kubernetes/default/shop/deployment/worker: executed")
            assert action_output(decision) == {"changed": True, "from": 3, "to": 5, "capped": False}
    [patch] = kube.writes()
    assert (patch.method, patch.path) == ("PATCH", "/apis/apps/v1/namespaces/shop/deployments/worker")
    assert patch.body == {"spec": {"replicas": 5}}
    assert kube.deployments[("shop", "worker")]["spec"]["replicas"] == 5 <= 8
