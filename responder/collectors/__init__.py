"""Diagnostic collectors: each module registers one or more read-only evidence gatherers."""

from responder.collectors.base import Collector, CollectorContext, Finding, registry
from responder.evidence import Evidence, EvidenceStatus

__all__ = ["Collector", "CollectorContext", "Evidence", "EvidenceStatus", "Finding", "registry"]
