"""Evidence as every layer sees it once gathered: collectors produce it, the guard's conditions read it,
the store keeps it, sinks show it."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any


class EvidenceStatus(enum.StrEnum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Evidence:
    """A finding as stored and shown: redacted, timed and size-capped."""

    step: str
    collector: str
    title: str
    status: EvidenceStatus
    duration_ms: float
    payload: dict[str, Any]
    text: str
    full_text: str | None = None
    truncated: bool = False
    # Gathered once for several incidents (the same call within collectors.cache_ttl).
    shared: bool = False

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data
