"""Run a rule's collectors concurrently, each within its timeout and all within a total bound.

One failing or hanging collector never blocks or fails the others: it becomes `error` or `timeout`
evidence. Every finding is redacted and size-capped before anyone sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


async def run_collectors(steps: Sequence[RenderedStep], ctx: CollectorContext, *, limits: EvidenceLimits,
                         redactor: Redactor, metrics: Metrics | None = None,
                         on_evidence: Callable[[Evidence], None] | None = None) -> list[Evidence]:
    started = time.monotonic()

    async def run_one(step: RenderedStep) -> Evidence:
        timeout = step.timeout or limits.default_timeout
        collector = registry.get(step.type)()
        began = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                finding = await collector.collect(step.params, ctx)
        except TimeoutError:
            finding = Finding(f"{step.type} timed out", {"timeout_s": timeout},
                              f"no answer within {timeout:g}s", EvidenceStatus.TIMEOUT)
        except Exception as exc:  # a collector's failure is evidence, not a crash
            log.warning("collector %s failed: %s", step.id, exc, extra={"incident": ctx.incident.id})
            finding = Finding(f"{step.type} failed", {"error": type(exc).__name__},
                              f"{type(exc).__name__}: {exc}", EvidenceStatus.ERROR)
        evidence = finalize(step, finding, began, redactor, limits)
        if metrics is not None:
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
