"""The job table: kinds declared once; rows queued by the previous release still run; a payload that does
not fit its model, or a kind nobody handles, fails its job with a clear error; sink events reference
evidence instead of copying it."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from responder.jobs import JobKind, JobTable, Payload
from responder.models import Alert, AlertStatus, Delivery, Job
from responder.store import Store, open_store
from tests.conftest import DaemonClient, make_config, write_rules
from tests.fakes.slack_api import FakeSlack
from tests.support.alerts import am_alert, am_payload
from tests.test_slack import BIG, LIGHT, settled, slack_config
from tests.test_slack import slack as slack  # the fixtures
from tests.test_slack import slack_token as slack_token


class Probe(Payload):
    n: int


# A queue no daemon serves, so these declarations never meet a real worker.
PROBE = JobKind("test.probe", Probe, queue="test-only")
ORPHAN = JobKind("test.orphan", Probe, queue="test-only")


async def test_a_declared_kind_without_a_handler_is_a_startup_error() -> None:
    table = JobTable()

    async def handle(job: Job, payload: Probe) -> None: ...

    table.add(PROBE, handle)
    with pytest.raises(ValueError, match=r"test\.orphan \(queue test-only\)"):
        table.check()
    with pytest.raises(ValueError, match="declared twice"):
        JobKind("test.probe", Probe, queue="test-only")
    with pytest.raises(TypeError, match="takes Probe"):
        PROBE.new("k", Payload())


async def insert_job(store: Store, queue: str, kind: str, payload: dict[str, Any], incident_id: int | None = None
                     ) -> int:
    async with store.db.transaction() as conn:
        return int(await conn.fetchval(
            "INSERT INTO jobs (queue, kind, ordering_key, incident_id, payload, status, max_attempts, run_after,"
            " created_at) VALUES ($1, $2, $3, $4, $5, 'queued', 5, 0, $6) RETURNING id",
            queue, kind, f"test:{kind}", incident_id, json.dumps(payload), time.time()))


async def wait_finished(store: Store, job_id: int, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        row = next(r for r in await store.queue.rows() if r["id"] == job_id)
        if row["status"] in ("done", "failed"):
            return dict(row)
        assert time.monotonic() < deadline, dict(row)
        await asyncio.sleep(0.05)


async def test_a_payload_that_does_not_fit_or_a_kind_nobody_handles_fails_with_a_clear_error(
        tmp_path: Path, store_url: str, daemon_client: DaemonClient) -> None:
    config = make_config(store_url, write_rules(tmp_path / "rules", "rules: []\n"), **{"sinks.console.enabled": False})
    _, daemon = await daemon_client(config)
    misshapen = await insert_job(daemon.store, "mitigations", "approval.execute", {"approval": "7"})
    unknown = await insert_job(daemon.store, "mitigations", "approval.explode", {"approval_id": 7})
    daemon.wake("mitigations")
    failed = await wait_finished(daemon.store, misshapen)
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert "payload does not fit ApprovalRef" in failed["last_error"] and "approval_id" in failed["last_error"]
    failed = await wait_finished(daemon.store, unknown)
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert "kind 'approval.explode' has no handler on queue 'mitigations'" in failed["last_error"]


@pytest.mark.usefixtures("slack_token")
async def test_a_sink_event_queued_by_the_previous_release_still_runs(
        tmp_path: Path, store_url: str, daemon_client: DaemonClient, slack: FakeSlack) -> None:
    # The previous release queued sink events with every evidence inline, full text included.
    store = await open_store(store_url)
    try:
        alert = Alert("alertmanager", AlertStatus.FIRING, "old-fp", time.time() - 60,
                      {"alertname": "HighErrorRate", "severity": "critical"}, {"summary": "queued before the upgrade"})
        await store.record_delivery(Delivery("alertmanager", b"{}", [alert]))
        [incident] = await store.list_incidents()
        async with store.db.transaction() as conn:
            await conn.execute("UPDATE jobs SET status = 'done' WHERE queue = 'pipeline'")
        view = asdict(incident) | {"status": "open", "rule": "api-errors", "error": None}
        old_event = {"incident": view, "bundles": [{
            "rule": "api-errors",
            "evidence": [{"step": "logs", "collector": "test.evidence", "title": "logs from before", "status": "ok",
                          "duration_ms": 3.0, "payload": {}, "text": "line 1", "full_text": None,
                          "truncated": False}],
            "decisions": [], "errors": [], "checklist": ["Check the last deploy"], "channel": None}]}
        await insert_job(store, "sink:slack", "incident.processed", old_event, incident.id)
    finally:
        await store.close()
    _, daemon = await daemon_client(slack_config(store_url, tmp_path, slack, LIGHT))
    rows = await settled(daemon.store)
    assert {r["status"] for r in rows} == {"done"}, rows
    [parent] = slack.parents("#incidents")
    texts = [m.text for m in slack.thread("#incidents", parent.ts)[1:]]
    assert any("logs from before" in t for t in texts), texts
    assert any(t.startswith("Checklist") for t in texts), texts


@pytest.mark.usefixtures("slack_token")
async def test_sink_events_reference_the_evidence_rows_instead_of_copying_them(
        tmp_path: Path, store_url: str, daemon_client: DaemonClient, slack: FakeSlack) -> None:
    client, daemon = await daemon_client(slack_config(store_url, tmp_path, slack, BIG,
                                                      **{"sinks.console.enabled": True}))
    assert (await client.post("/webhooks/alertmanager", json=am_payload(am_alert("Big")))).status == 200
    await settled(daemon.store)
    [incident] = await daemon.store.list_incidents()
    evidence = await daemon.store.evidence(incident.id)
    assert any(e["full_text"] and len(e["full_text"]) > 100_000 for e in evidence)
    events = [r for r in await daemon.store.queue.rows() if r["kind"] == "incident.processed"]
    assert sorted(r["queue"] for r in events) == ["sink:console", "sink:slack"]
    for row in events:
        payload = json.loads(row["payload"])
        assert [b["evidence_ids"] for b in payload["bundles"]] == [[e["id"] for e in evidence]]
        assert len(row["payload"]) < 5000, "no evidence text in the event row"
    # The Slack sink loaded the rows: the full log is attached to the thread.
    [parent] = slack.parents("#incidents")
    uploads = [slack.uploads[f["id"]]["content"] for m in slack.thread("#incidents", parent.ts) for f in m.files]
    assert any(b"request 9999 failed" in content for content in uploads)
