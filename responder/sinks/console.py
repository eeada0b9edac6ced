"""The console sink: the embedded default, a readable block on standard output per incident event."""

from __future__ import annotations

import sys

from responder.config import Config
from responder.events import IncidentEvent
from responder.models import Job
from responder.sinks.base import Delivered, Sink, registry
from responder.sinks.render import render_event


@registry.register
class ConsoleSink(Sink):
    name = "console"

    @classmethod
    def enabled(cls, config: Config) -> bool:
        return config.sinks.console.enabled

    async def deliver(self, job: Job, event: IncidentEvent) -> Delivered:
        sys.stdout.write(render_event(job.kind, event) + "\n")
        sys.stdout.flush()
        return Delivered({"printed": True})
