"""Run collectors the way the pipeline does (rendered steps, the real runner, redaction, caps) against
a config, without a daemon, and return the stored-shape evidence."""

from __future__ import annotations

import time
from typing import Any

from responder.collectors.base import CollectorContext, registry
from responder.collectors.runner import EvidenceLimits, run_collectors
from responder.config import Config, load_config, secret_values
from responder.evidence import Evidence
from responder.metrics import Metrics
from responder.models import Incident, IncidentStatus
from responder.redaction import Redactor
from responder.rules.model import StepSpec
from responder.steps import RenderedStep
from responder.targets import Targets


def config_with(**overrides: Any) -> Config:
    return load_config(None, overrides)


def incident() -> Incident:
    now = time.time()
    return Incident(id=1, source="alertmanager", fingerprint="f", alertname="Test", status=IncidentStatus.OPEN,
                    starts_at=now, opened_at=now, last_seen=now, deliveries=1, labels={}, annotations={},
                    last_alert_id=1)


def step(collector: str, params: dict[str, Any], *, step_id: str | None = None,
         timeout: float | None = None) -> RenderedStep:
    spec = StepSpec(type=collector, id=step_id, params=params, timeout=timeout)
    model = registry.get(collector).params_model
    return RenderedStep(step_id or collector, collector, spec, model.model_validate(params), timeout)


async def run_steps(config: Config, *steps: RenderedStep, total_timeout: float = 30.0,
                    metrics: Metrics | None = None) -> list[Evidence]:
    limits = EvidenceLimits(config.pipeline.collector_timeout, total_timeout, config.pipeline.evidence_display_bytes,
                            config.pipeline.evidence_store_bytes)
    async with Targets(config) as targets:
        return await run_collectors(steps, CollectorContext(incident(), targets), limits=limits,
                                    redactor=Redactor(secret_values(config), config.redact), metrics=metrics)


async def collect(config: Config, collector: str, **params: Any) -> Evidence:
    (evidence,) = await run_steps(config, step(collector, params))
    return evidence
