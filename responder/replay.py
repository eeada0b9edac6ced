"""Replay: a saved payload through the whole pipeline, in-process, on a throwaway store.

The daemon's own machinery runs (intake parsing, the store, rule matching, collectors for real, the
guard, sinks when asked), but against a temporary SQLite file, so the live daemon's incidents, audit,
cooldowns and budgets are untouched unless a store is named explicitly. Mitigations run in dry-run;
enforcement is only allowed on the live store, where the live guards apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from responder.config import Config, IntakeConfig
from responder.daemon import Daemon
from responder.evidence import Evidence
from responder.intake import PayloadError
from responder.intake import registry as intake_registry
from responder.jobs import PIPELINE_QUEUE
from responder.models import Delivery, Incident
from responder.rules.engine import RuleSet
from responder.store.db import Row


class EnforceRefused(Exception):
    """Enforcement was asked for where the live guards would not apply."""


def detect_source(body: bytes) -> str:
    """Which sender a raw payload came from, by its shape."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"not valid JSON: {exc}") from None
    if isinstance(data, dict):
        if isinstance(data.get("event"), dict) and "event_type" in data["event"]:
            return "pagerduty"
        if data.get("version") == "1" and ("orgId" in data or "state" in data or "title" in data):
            return "grafana"
        if "alerts" in data:
            return "alertmanager"
    raise PayloadError("cannot tell which sender this payload is from; give --source")


def parse_payload(config: Config, body: bytes, source: str | None = None,
                  headers: Mapping[str, str] | None = None) -> Delivery:
    kind = source or detect_source(body)
    intake = intake_registry.get(kind)(config.intakes.get(kind, IntakeConfig()))
    return intake.parse(body, headers or {})


def only_alert(delivery: Delivery, fingerprint: str, starts_at: float) -> Delivery:
    """The delivery cut down to one stored alert (a payload may carry a whole group)."""
    return dataclasses.replace(delivery, alerts=[
        a for a in delivery.alerts if (a.fingerprint, a.starts_at) == (fingerprint, starts_at)])


@dataclass
class ReplayResult:
    incident: Incident
    evidence: list[Row]
    actions: list[Row]


def replay_config(config: Config, *, store_url: str | None, workdir: Path, enforce: bool) -> Config:
    store = config.store.model_copy(update={"url": store_url or f"sqlite:///{workdir / 'replay.db'}",
                                            "poll_interval": 0.05})
    mitigations = config.mitigations.model_copy(update={"mode": "enforce" if enforce else "dry-run"})
    return config.model_copy(update={"store": store, "mitigations": mitigations})


@contextlib.asynccontextmanager
async def replaying(config: Config, ruleset: RuleSet, *, enforce: bool = False, post: bool = False,
                    store_url: str | None = None, on_evidence: Callable[[Evidence], None] | None = None
                    ) -> AsyncIterator[Daemon]:
    """A daemon without a listening socket, on a throwaway store (unless `store_url`).

    Enforcement is refused on a throwaway store: its kill switch, cooldowns, budgets and audit are
    empty, so real targets would be acted on outside every live guard. With `store_url` (the live
    store) the guards and the audit are the live ones."""
    if enforce and store_url is None:
        raise EnforceRefused("--enforce acts on real targets, so it needs the live store's guards (kill switch,"
                             " cooldowns, budgets, audit): add --record to replay into the configured store")
    with tempfile.TemporaryDirectory(prefix="responder-replay-") as tmp:
        daemon = Daemon(replay_config(config, store_url=store_url, workdir=Path(tmp), enforce=enforce), ruleset)
        # The console sink would print the bundle a second time; other sinks only with --post.
        daemon.sinks = [s for s in daemon.sinks if post and s.name != "console"]
        daemon.on_evidence = on_evidence
        # The daemon's own lifecycle (store, targets, sinks, then workers), without an HTTP server.
        async with contextlib.AsyncExitStack() as stack:
            app = web.Application()
            for lifecycle in (daemon.resources, daemon.background):
                await stack.enter_async_context(contextlib.asynccontextmanager(lifecycle)(app))
            yield daemon


async def run_replay(daemon: Daemon, delivery: Delivery, timeout: float) -> list[ReplayResult]:
    """Record the delivery and wait until its incidents are processed and their sink events delivered."""
    await daemon.store.record_delivery(delivery)
    daemon.wake_pipeline()
    queues = [PIPELINE_QUEUE, *(s.queue for s in daemon.sinks)]
    async with asyncio.timeout(timeout):
        # The queue lives in the store, so it is polled (as the workers do between wake-ups).
        while any([await daemon.store.queue.depth(q) for q in queues]):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    results: list[ReplayResult] = []
    for alert in delivery.alerts:
        for incident in await daemon.store.incidents_of_alert(alert.source, alert.fingerprint, alert.starts_at):
            if incident.id not in {r.incident.id for r in results}:
                results.append(ReplayResult(incident, await daemon.store.evidence(incident.id),
                                            await daemon.store.actions(incident.id)))
    return results


def result_json(result: ReplayResult) -> dict[str, Any]:
    incident = result.incident
    return {
        "incident": {"fingerprint": incident.fingerprint, "alertname": incident.alertname, "rule": incident.rule,
                     "group_key": incident.group_key, "members": incident.members_total,
                     "status": incident.status.value, "labels": incident.labels, "error": incident.error},
        "evidence": [{k: row[k] for k in ("rule", "step", "collector", "title", "status", "duration_ms", "text")}
                     for row in result.evidence],
        "actions": [{k: row[k] for k in ("rule", "step", "action", "target", "mode", "outcome", "guard", "reason")}
                    for row in result.actions],
    }
