"""Plugins for tests, loaded through the config's `plugins:` key exactly as a user's own would be."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from responder.collectors.base import Collector, CollectorContext, Finding
from responder.collectors.base import registry as collectors
from responder.mitigations.base import Action, ActionContext
from responder.mitigations.base import registry as actions


class SleepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = 0.0
    label: str = "slept"


@collectors.register
class SleepCollector(Collector[SleepParams]):
    """Takes a known time, so tests can kill the daemon mid-job or measure pipeline overhead."""

    name = "test.sleep"
    params_model = SleepParams

    async def collect(self, params: SleepParams, ctx: CollectorContext) -> Finding:
        await asyncio.sleep(params.seconds)
        return Finding(f"{params.label} {params.seconds:g}s", {"seconds": params.seconds, "incident": ctx.incident.id},
                       f"{params.label} for {params.seconds:g}s")


class EvidenceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = "text"
    size: int = 10


@collectors.register
class EvidenceCollector(Collector[EvidenceParams]):
    """Evidence of a chosen shape and size: a Prometheus range query, a table, log lines, fields."""

    name = "test.evidence"
    params_model = EvidenceParams

    async def collect(self, params: EvidenceParams, ctx: CollectorContext) -> Finding:
        n = params.size
        if params.kind == "series":
            series = [{"metric": {"__name__": "http_errors", "pod": f"api-{i}"},
                       "values": [[1_700_000_000 + 60 * t, str(t * (i + 1) % 7)] for t in range(30)]} for i in range(2)]
            return Finding("error rate", {"series": series}, "\n".join(f"api-{i}: last {29 * (i + 1) % 7}" for i in
                                                                      range(2)))
        if params.kind == "rows":
            rows = [{"pod": f"api-{i}", "restarts": i, "status": "CrashLoopBackOff"} for i in range(n)]
            return Finding("pods", {"rows": rows}, "\n".join(f"api-{i} {i}" for i in range(n)))
        if params.kind == "fields":
            return Finding("settings", {"fields": {f"key{i}": f"value{i}" for i in range(n)}}, "fields")
        lines = "\n".join(f"00:00:{i % 60:02d} ERROR request {i} failed: upstream timeout" for i in range(n))
        return Finding("logs", {"lines": n}, lines)


class RecordParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str


@actions.register
class RecordAction(Action[RecordParams]):
    """Appends one line per execution to $RESPONDER_TEST_ACTION_LOG: the test counts real writes."""

    name = "test.record"
    params_model = RecordParams

    def target(self, params: RecordParams) -> str:
        return f"test/{params.target}"

    def describe(self, params: RecordParams) -> str:
        return f"record an action on {params.target}"

    async def execute(self, params: RecordParams, ctx: ActionContext) -> dict[str, Any]:
        with Path(os.environ["RESPONDER_TEST_ACTION_LOG"]).open("a") as log:
            log.write(f"{ctx.incident.id} {params.target}\n")
        return {"recorded": params.target}
