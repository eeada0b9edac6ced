"""Diagnostic collectors: each module registers one or more read-only evidence gatherers."""

from responder.collectors.base import Collector, CollectorContext, Evidence, EvidenceStatus, Finding, registry

__all__ = ["Collector", "CollectorContext", "Evidence", "EvidenceStatus", "Finding", "registry"]
