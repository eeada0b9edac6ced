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
