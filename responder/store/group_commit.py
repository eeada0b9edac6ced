"""Group commit: many callers' writes in one transaction.

A commit costs one fsync (SQLite) or one WAL flush plus the BEGIN/COMMIT round trips (PostgreSQL),
whatever it holds. Callers that write concurrently (webhooks, finishing jobs) queue their items here; a
writer task commits whatever has queued up in one transaction and answers each caller once that
transaction has committed. Under light load a batch is one item, so nothing waits for a timer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from responder.store.db import Connection, Database, StoreUnavailable, retrying

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

# Writes a batch within an open transaction; returns one result per item, in order.
BatchWriter = Callable[[Connection, Sequence[Item]], Coroutine[Any, Any, list[Result]]]


@dataclass
class _Pending(Generic[Item, Result]):
    item: Item
    future: asyncio.Future[Result] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommit(Generic[Item, Result]):
    """`await submit(item)` returns the item's result once it is committed, or raises what it raised.

    A batch that fails for any reason but an unavailable store is retried one item per transaction, so
    one bad item (or one that lost a race, like a job whose lease expired) does not fail its neighbours."""

    def __init__(self, name: str, db: Database, write: BatchWriter[Item, Result], *, writers: int,
                 max_batch: int = 128, connection_only: bool = False) -> None:
        """`connection_only`: `write` awaits nothing but its connection, so the database may run the whole
        transaction in one go (Database.run_batch)."""
        self.name = name
        self.db = db
        self.write = write
        self.connection_only = connection_only
        self.writers = writers
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Pending[Item, Result]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def submit(self, item: Item) -> Result:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._run(), name=f"{self.name}-{i}") for i in range(self.writers)]
        pending: _Pending[Item, Result] = _Pending(item)
        await self._queue.put(pending)
        return await pending.future

    def backlog(self) -> int:
        return self._queue.qsize()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        while not self._queue.empty():
            self._queue.get_nowait().future.set_exception(StoreUnavailable("the store is closing"))

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results = await self._commit([p.item for p in batch])
            except StoreUnavailable as exc:
                for p in batch:
                    _fail(p, exc)
                continue
            except Exception as exc:
                if len(batch) == 1:
                    _fail(batch[0], exc)
                    continue
                log.warning("%s: a batch of %d failed (%s: %s); retrying one by one", self.name, len(batch),
                            type(exc).__name__, exc)
                for p in batch:
                    try:
                        (result,) = await self._commit([p.item])
                    except Exception as one:
                        _fail(p, one)
                    else:
                        _resolve(p, result)
                continue
            for p, result in zip(batch, results, strict=True):
                _resolve(p, result)

    async def _commit(self, items: list[Item]) -> list[Result]:
        """One transaction, run again whole while the store is transiently unavailable (a deadlock, a
        dropped connection): its callers then get their answer after commit, not an error."""

        async def once() -> list[Result]:
            if self.connection_only:
                return await self.db.run_batch(lambda conn: self.write(conn, items))
            async with self.db.transaction() as conn:
                return await self.write(conn, items)

        return await retrying(once)


# A future may already be done: its caller was cancelled (a client gone, a job timed out).

def _resolve(pending: _Pending[Item, Result], result: Result) -> None:
    if not pending.future.done():
        pending.future.set_result(result)


def _fail(pending: _Pending[Item, Result], exc: BaseException) -> None:
    if not pending.future.done():
        pending.future.set_exception(exc)
