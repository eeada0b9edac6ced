"""Intake first: during a burst, webhooks waiting for their commit go before new pipeline work.

Both share one process (and, on SQLite, one writer). A delivery is acknowledged only once committed, so
every millisecond the pipeline takes from it is latency for the sender; a pipeline job, on the other hand,
is already durable and loses nothing by starting a little later. So before the pipeline claims more jobs it
waits until no delivery is waiting for its commit, but never longer than `max_wait`: under a sustained burst
it still claims a batch every `max_wait`, and outside bursts (nothing waiting) it does not wait at all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class IntakeFirst:
    def __init__(self, max_wait: float) -> None:
        self.max_wait = max_wait
        self._waiting = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    @contextlib.contextmanager
    def delivering(self) -> Iterator[None]:
        """Around a delivery's wait for its commit."""
        self._waiting += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._waiting -= 1
            if not self._waiting:
                self._quiet.set()

    async def turn(self) -> None:
        """Return when no delivery is waiting, or after `max_wait` at the latest."""
        if self._waiting and self.max_wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._quiet.wait(), timeout=self.max_wait)
