"""The console sink: the embedded default, a readable block on standard output per incident event."""

from __future__ import annotations

import sys

from responder.config import Config
from responder.events import IncidentEvent, Note
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

    async def note(self, job: Job, note: Note) -> Delivered:
        by = f" by {note.by}" if note.by else ""
        detail = f"\n  {note.detail}" if note.detail else ""
        sys.stdout.write(f"[incident.note] incident #{job.incident_id} {note.kind}: {note.text}{by}{detail}\n")
        sys.stdout.flush()
        return Delivered({"printed": True})
