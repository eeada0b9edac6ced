"""SQLite's WAL checkpoints, outside the commits that webhooks wait for.

Left to itself, SQLite checkpoints inside the COMMIT that grows the WAL past `wal_autocheckpoint` pages:
that commit copies every page of the WAL into the database file and fsyncs it, and the deliveries of its
batch, and of the batch waiting behind it, wait for all of it. While the checkpointer runs, the store's
connection does not checkpoint; the checkpointer does, shortly after commits, from a connection and a
thread of its own, so the copying and the database file's fsync run beside the writer's commits.

A checkpoint that runs beside the writer copies the frames committed when it started, and SQLite starts
the WAL again from its beginning (instead of growing it) only at a write that begins once every frame has
been copied, which under a steady stream of commits never happens by itself. So when the WAL has reached
`pages` frames, the checkpointer copies again what the writer committed during its last copy, until that is
little, and then the rest holding the write lock: a short pause (a few frames and the fsync), after which
the next batch starts the WAL again. The WAL then stays bounded under any load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiosqlite

# SQLite's default wal_autocheckpoint: the WAL's size in pages before it is checkpointed and restarted.
PAGES = 1000
# Copies beside the writer before the one under the write lock, at most.
PASSES = 4


class WalCheckpointer:
    """`run()` checkpoints the WAL of the database at `path` until cancelled; `committed()` after each commit.
    `lock` is the store's write lock, `store` its connection (whose own checkpoints are off meanwhile)."""

    def __init__(self, path: Path, synchronous: str, lock: asyncio.Lock, store: aiosqlite.Connection, *,
                 interval: float = 0.1, pages: int = PAGES) -> None:
        self.path = path
        self.synchronous = synchronous
        self.interval = interval
        self.pages = pages
        self._lock = lock
        self._store = store
        self._committed = asyncio.Event()

    def committed(self) -> None:
        self._committed.set()

    def tasks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        return {"sqlite-checkpointer": self.run}

    async def run(self) -> None:
        import aiosqlite

        conn = await aiosqlite.connect(str(self.path), isolation_level=None)
        try:
            await conn.execute(f"PRAGMA synchronous={self.synchronous}")
            await self._autocheckpoint(0)
            try:
                while True:
                    await self._committed.wait()
                    # Commits coming close together share a checkpoint.
                    await asyncio.sleep(self.interval)
                    self._committed.clear()
                    await self.checkpoint(conn)
            finally:
                # Stopped, or failed until restarted: SQLite checkpoints by itself again meanwhile.
                await self._autocheckpoint(self.pages)
        finally:
            await conn.close()

    async def checkpoint(self, conn: aiosqlite.Connection) -> None:
        """Copy the WAL into the database beside the writer, and again while the writer added many frames
        during the last copy; once the WAL has reached `pages` frames, the few left under the write lock."""
        before = 0
        for _ in range(PASSES):
            [(_, frames, _)] = await conn.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
            if frames < self.pages:
                return
            if frames - before <= self.pages // 10:
                break
            before = frames
        async with self._lock:
            await conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def _autocheckpoint(self, pages: int) -> None:
        async with self._lock:
            await self._store.execute(f"PRAGMA wal_autocheckpoint={pages}")
