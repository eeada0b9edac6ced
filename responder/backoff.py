"""Jittered exponential backoff, shared by job retries, outbound API retries and task restarts."""

from __future__ import annotations

import random


def backoff_delay(attempts: int, initial: float, maximum: float) -> float:
    """Exponential backoff with jitter, so retries of many jobs do not arrive together."""
    base: float = min(maximum, initial * 2 ** max(0, attempts - 1))
    return base * random.uniform(0.8, 1.2)
