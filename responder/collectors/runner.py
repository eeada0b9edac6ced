"""Run a rule's collectors concurrently, each within its timeout and all within a total bound.

One failing or hanging collector never blocks or fails the others: it becomes `error` or `timeout`
evidence. Every finding is redacted and size-capped before anyone sees it. Identical calls (type and
rendered parameters, the target among them) made by several incidents within `collectors.cache_ttl`
share one execution (`SharedCalls`): in a storm the systems under stress are asked once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any

from responder.collectors.base import CollectorContext, Finding, registry
from responder.evidence import Evidence, EvidenceStatus
from responder.metrics import Metrics
from responder.redaction import Redactor
from responder.steps import RenderedStep

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EvidenceLimits:
    default_timeout: float
    total_timeout: float
    display_bytes: int
    store_bytes: int


def cap(text: str, limit: int, note: str) -> tuple[str, bool]:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text, False
    cut = data[:limit].decode("utf-8", errors="ignore")
    return f"{cut}\n… [truncated: {len(data) - limit} more bytes; {note}]", True


class SharedCalls:
    """Single-flight with a time to live: the first caller of a key runs it, callers arriving while it
    runs or within `ttl` seconds after get its finding. A failed finding is not kept past its run, so
    the next caller tries again. The runs are tasks owned here, cancelled by `close`."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._runs: dict[str, tuple[float, asyncio.Task[Finding]]] = {}

    async def run(self, key: str, call: Callable[[], Coroutine[Any, Any, Finding]]) -> tuple[Finding, bool]:
        """The finding for `key`, and whether it came from another caller's run."""
        now = time.monotonic()
        self._forget(now)
        entry = self._runs.get(key)
        if entry is not None:
            return await asyncio.shield(entry[1]), True
        task = asyncio.create_task(call(), name=f"collector-call:{key[:60]}")
        self._runs[key] = (now + self.ttl, task)
        # Shielded: one caller cut off by its total budget does not cancel the run the others wait for.
        return await asyncio.shield(task), False

    def _forget(self, now: float) -> None:
        for key, (expires, task) in list(self._runs.items()):
            failed = task.done() and (task.cancelled() or task.result().status is not EvidenceStatus.OK)
            if (task.done() and expires <= now) or failed:
                del self._runs[key]

    async def close(self) -> None:
        tasks = [task for _, task in self._runs.values()]
        self._runs.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def finalize(step: RenderedStep, finding: Finding, started: float, redactor: Redactor,
             limits: EvidenceLimits) -> Evidence:
    text = redactor.text(finding.text)
    payload = redactor.tree(finding.payload)
    # A payload too large to keep is replaced by a marker rather than stored whole.
    if len(json.dumps(payload, default=str)) > limits.store_bytes:
        payload = {"truncated": True, "note": "payload exceeded the evidence store cap"}
    shown, truncated = cap(text, limits.display_bytes, "full text stored with the incident")
    full, _ = cap(text, limits.store_bytes, "exceeded the evidence store cap")
    return Evidence(
        step=step.id,
        collector=step.type,
        title=redactor.text(finding.title),
        status=finding.status,
        duration_ms=round((time.monotonic() - started) * 1000, 1),
        payload=payload,
        text=shown,
        full_text=full if truncated else None,
        truncated=truncated,
    )


async def collect(step: RenderedStep, ctx: CollectorContext, timeout: float) -> Finding:
    """One collector call; its failure or silence becomes a finding, never an exception."""
    collector = registry.get(step.type)()
    try:
        async with asyncio.timeout(timeout):
            return await collector.collect(step.params, ctx)
    except TimeoutError:
        return Finding(f"{step.type} timed out", {"timeout_s": timeout}, f"no answer within {timeout:g}s",
                       EvidenceStatus.TIMEOUT)
    except Exception as exc:  # a collector's failure is evidence, not a crash
        log.warning("collector %s failed: %s", step.id, exc, extra={"incident": ctx.incident.id})
        return Finding(f"{step.type} failed", {"error": type(exc).__name__}, f"{type(exc).__name__}: {exc}",
                       EvidenceStatus.ERROR)


async def run_collectors(steps: Sequence[RenderedStep], ctx: CollectorContext, *, limits: EvidenceLimits,
                         redactor: Redactor, metrics: Metrics | None = None,
                         on_evidence: Callable[[Evidence], None] | None = None,
                         shared: SharedCalls | None = None) -> list[Evidence]:
    started = time.monotonic()

    async def run_one(step: RenderedStep) -> Evidence:
        timeout = step.timeout or limits.default_timeout
        began = time.monotonic()
        if shared is None:
            finding, reused = await collect(step, ctx, timeout), False
        else:
            key = f"{step.type}\0{step.params.model_dump_json()}"
            finding, reused = await shared.run(key, lambda: collect(step, ctx, timeout))
        evidence = replace(finalize(step, finding, began, redactor, limits), shared=reused)
        if metrics is not None and not reused:
            metrics.collector_runs.labels(step.type, evidence.status.value).inc()
            metrics.collector_duration.labels(step.type).observe(evidence.duration_ms / 1000)
        if on_evidence is not None:
            on_evidence(evidence)
        return evidence

    gathered: dict[int, Evidence] = {}

    async def run_into(index: int, step: RenderedStep) -> None:
        gathered[index] = await run_one(step)

    # A task group: cancelling the job (its timeout, a shutdown) cancels and awaits every collector of it.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limits.total_timeout), asyncio.TaskGroup() as group:
            for index, step in enumerate(steps):
                group.create_task(run_into(index, step), name=f"collector:{step.id}")
    return [gathered.get(index) or finalize(step, Finding(
        f"{step.type} timed out", {"timeout_s": limits.total_timeout},
        f"cut off by the rule's total collector budget of {limits.total_timeout:g}s",
        EvidenceStatus.TIMEOUT), started, redactor, limits) for index, step in enumerate(steps)]
