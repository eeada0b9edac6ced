"""Sinks: where incident events go (console, Slack). Each is fed by its own durable queue."""

from responder.sinks.base import Sink, SinkError, registry

__all__ = ["Sink", "SinkError", "registry"]
